//go:build nylon_legacy && nylon_testhost

package sdk

// The legacy backend against the C test host (legacy_testhost.c), with many
// sessions at once, replies inline and from other threads, reads from
// several goroutines of one phase, WebSocket events and closes during a
// read. Run with: go test -race -tags nylon_legacy,nylon_testhost ./sdk

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var registerOnce sync.Once

// Failures seen inside handlers (they run on the SDK's goroutines).
var (
	failMu   sync.Mutex
	failures []string
	wsSeen   sync.Map // sid -> *[]string
)

func fail(format string, args ...any) {
	failMu.Lock()
	failures = append(failures, fmt.Sprintf(format, args...))
	failMu.Unlock()
}

func register() {
	registerOnce.Do(func() {
		p := NewNylonPlugin()
		p.AddPhaseHandler("t", func(phase *PhaseHandler) {
			sid := phase.SessionId
			want := func(method int) string { return fmt.Sprintf("%d:%d", method, sid) }
			var kept string // a read's result kept across phases, as plugins do
			phase.RequestFilter(func(ctx *PhaseRequestFilter) {
				kept = ctx.Request().Method()
				// Five reads from five goroutines of one phase: each gets
				// its own reply, never another read's.
				var wg sync.WaitGroup
				reads := []struct {
					f      func() string
					method int
				}{
					{ctx.Request().Path, 204},
					{ctx.Request().Query, 205},
					{ctx.Request().Host, 207},
					{ctx.Request().ClientIP, 208},
					{ctx.Request().URL, 203},
				}
				for _, r := range reads {
					r := r
					wg.Add(1)
					go func() {
						defer wg.Done()
						if got := r.f(); got != want(r.method) {
							fail("sid %d: read %d got %q", sid, r.method, got)
						}
					}()
				}
				wg.Wait()
				// Read again in the phase: answered from the phase's copy.
				if got := ctx.Request().Path(); got != want(204) {
					fail("sid %d: second path read got %q", sid, got)
				}
				ctx.Response().SetHeader("x-sid", strconv.Itoa(int(sid)))
				ctx.Next()
			})
			phase.Logging(func(ctx *PhaseLogging) {
				if d := ctx.Response().Duration(); d != int64(sid) {
					fail("sid %d: duration %d", sid, d)
				}
				if kept != want(209) {
					fail("sid %d: the method read in phase 1 is now %q", sid, kept)
				}
				ctx.Next()
			})
		})
		p.AddPhaseHandler("ws", func(phase *PhaseHandler) {
			sid := phase.SessionId
			seen := &[]string{}
			wsSeen.Store(sid, seen)
			phase.RequestFilter(func(ctx *PhaseRequestFilter) {
				_ = ctx.WebSocketUpgrade(WebSocketCallbacks{
					OnOpen: func(ws *WebSocketConn) { *seen = append(*seen, "open") },
					OnMessageText: func(ws *WebSocketConn, msg string) {
						*seen = append(*seen, msg)
						_ = ws.SendText(msg)
					},
					OnClose: func(ws *WebSocketConn) { *seen = append(*seen, "close") },
				})
			})
		})
		p.AddPhaseHandler("ws_late", func(phase *PhaseHandler) {
			sid := phase.SessionId
			phase.RequestFilter(func(ctx *PhaseRequestFilter) {
				// Upgrades from a goroutine of its own, after the handler
				// returned: OnOpen (sent inside the upgrade's call) must
				// still reach the callbacks.
				go func() {
					err := ctx.WebSocketUpgrade(WebSocketCallbacks{
						OnOpen: func(ws *WebSocketConn) { lateOpens.Store(sid, true) },
					})
					if err != nil {
						fail("sid %d: upgrade: %v", sid, err)
					}
					lateUpgrades.Store(sid, true)
				}()
			})
		})
		p.AddPhaseHandler("stuck", func(phase *PhaseHandler) {
			phase.RequestFilter(func(ctx *PhaseRequestFilter) {
				// The test host never answers a read of 112 (Error): only
				// the session's close can end this read.
				go func() {
					if got := ctx.Response().Error(); got != "" {
						fail("a read ended by the close returned %q", got)
					}
					stuckDone.Add(1)
				}()
			})
		})
		startPool()
	})
}

var (
	stuckDone    atomic.Int32
	lateOpens    sync.Map // sid -> true once OnOpen ran
	lateUpgrades sync.Map // sid -> true once WebSocketUpgrade returned
)

// waitEnds waits until sid's phase n has ended (false after 20 s: a lost
// wake-up). It runs on the test's own goroutines, so it reports with fail.
func waitEnds(sid uint32, n uint32) bool {
	deadline := time.Now().Add(20 * time.Second)
	for thEnds(sid) < n {
		if time.Now().After(deadline) {
			fail("sid %d: phase %d never ended (lost wake-up?)", sid, n)
			return false
		}
		time.Sleep(20 * time.Microsecond)
	}
	return true
}

func checkFailures(t *testing.T) {
	failMu.Lock()
	defer failMu.Unlock()
	for _, f := range failures {
		t.Error(f)
	}
	failures = nil
}

func runSessions(t *testing.T, threaded bool, base uint32) {
	register()
	thSetThreaded(threaded)
	var wg sync.WaitGroup
	for g := uint32(0); g < 8; g++ {
		wg.Add(1)
		go func(g uint32) {
			defer wg.Done()
			for i := uint32(0); i < 100; i++ {
				sid := base + g*1000 + i + 1
				if !thOpen(sid, "t") {
					fail("sid %d: open refused", sid)
					return
				}
				for n, phase := range []uint8{1, 2, 3, 4} {
					thPhase(sid, phase)
					if !waitEnds(sid, uint32(n+1)) {
						return
					}
					if thLastEnd(sid) != 1 {
						fail("sid %d: phase %d ended with %d", sid, phase, thLastEnd(sid))
					}
				}
				thClose(sid)
			}
		}(g)
	}
	wg.Wait()
	checkFailures(t)
	if n := nylon_go_sessions(); n != 0 {
		t.Errorf("%d sessions left after close", n)
	}
}

func TestLegacySessionsWithInlineReplies(t *testing.T) { runSessions(t, false, 10000) }

func TestLegacySessionsWithRepliesFromOtherThreads(t *testing.T) { runSessions(t, true, 20000) }

func TestLegacyUnknownEntryIsRefused(t *testing.T) {
	register()
	if thOpen(30001, "nope") {
		t.Fatal("an unknown entry was accepted")
	}
}

func TestLegacyWebSocketEventsRunInOrder(t *testing.T) {
	register()
	thSetThreaded(false)
	const sid = 40001
	if !thOpen(sid, "ws") {
		t.Fatal("open refused")
	}
	thPhase(sid, 1) // the upgrade: the host sends OnOpen inside it
	// A host sends the client's messages only after the upgrade (and its
	// OnOpen): wait for the handler to have run.
	waitIdle(t, sid, true)
	var want []string
	want = append(want, "open")
	for i := 0; i < 500; i++ {
		m := "m" + strconv.Itoa(i)
		thEvent(sid, 351, m)
		want = append(want, m)
	}
	thEvent(sid, 353, "")
	want = append(want, "close")
	v, _ := wsSeen.Load(int32(sid))
	seen := v.(*[]string)
	// The events run on a worker: wait for the last one. The worker
	// touches *seen; read it only once the session is idle.
	waitIdle(t, sid, false)
	if fmt.Sprint(*seen) != fmt.Sprint(want) {
		t.Fatalf("events ran as %v", *seen)
	}
	thClose(sid)
}

func TestLegacyCloseWakesAWaitingRead(t *testing.T) {
	register()
	const sid = 50001
	if !thOpen(sid, "stuck") {
		t.Fatal("open refused")
	}
	before := stuckDone.Load()
	thPhase(sid, 1)
	s := lookup(sid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.be.mu.Lock()
		waiting := s.be.pending == mResponseError
		s.be.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the read never started")
		}
		time.Sleep(100 * time.Microsecond)
	}
	thClose(sid)
	for stuckDone.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("a read waiting at close was never woken")
		}
		time.Sleep(100 * time.Microsecond)
	}
	checkFailures(t)
}

func TestLegacyWebSocketUpgradeFromAGoroutine(t *testing.T) {
	register()
	thSetThreaded(false)
	for sid := uint32(70001); sid <= 70050; sid++ {
		if !thOpen(sid, "ws_late") {
			t.Fatal("open refused")
		}
		thPhase(sid, 1)
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, opened := lateOpens.Load(int32(sid))
			_, upgraded := lateUpgrades.Load(int32(sid))
			if opened && upgraded {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sid %d: OnOpen never ran", sid)
			}
			time.Sleep(50 * time.Microsecond)
		}
		thClose(sid)
	}
	checkFailures(t)
}

// waitIdle waits until sid has nothing queued or running (and, with ws,
// has upgraded).
func waitIdle(t *testing.T, sid uint32, ws bool) {
	s := lookup(sid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.be.mu.Lock()
		idle := !s.be.scheduled && (!ws || s.be.ws)
		s.be.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the session never went idle")
		}
		time.Sleep(100 * time.Microsecond)
	}
}
