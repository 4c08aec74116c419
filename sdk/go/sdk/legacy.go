//go:build nylon_legacy

package sdk

// The legacy backend: the same public API over the six symbols of the legacy
// ABI (docs/legacy-abi.md), for a plugin that must still load into an
// unmodified upstream Nylon host. Build with -tags nylon_legacy.
//
// What it does differently from the upstream SDK (the seed's roadmap, phases
// 1 and 2, on the Go side):
//
//   - A fixed pool of worker goroutines runs the phases and WebSocket events,
//     not a goroutine per event. Each session has its own queue: its events
//     run one at a time, in the order the host sent them (a WebSocket's
//     messages are never reordered, OnClose never overtakes a message). One
//     idle worker polls the run queue for a few microseconds before it
//     parks, so a host that starts the next phase soon gets a worker without
//     waking a thread (on this project's 2-core VM that took a request of the
//     scenario on the fast host from about 110 µs to about 14 µs).
//   - A read waits for its reply on the session's channel, not on a mutex +
//     condition variable shared by every read; a reply wakes only its reader.
//     Reads of one session are serialised (the protocol matches a reply to
//     its read by method id only), so a reply can never go to the wrong
//     reader and an empty reply is never answered with stale data.
//   - Replies are copied once, into a per-phase arena of the session; what a
//     read returns is a view of it, and repeated reads of the same field in a
//     phase are answered from it. An arena is never written again once its
//     phase is over, so what a read returned stays valid as long as the
//     plugin keeps it, as upstream's copies did. The request headers (and the response headers) are FlatBuffers-
//     decoded once per phase; Header(name) is answered from that list.
//   - A phase without a handler is ended on the host's thread, in the
//     phase-start call (the default handler only calls Next).
//   - Messages to the host are passed without a copy (the C call borrows the
//     Go bytes for its duration; the host copies them), not C.malloc'ed.
//   - A session is removed when the host closes it, and a read still waiting
//     then is woken.

/*
#include <stdint.h>
#include <stdlib.h>

typedef struct {
	uint32_t sid;
	uint8_t phase;
	uint32_t method;
	const unsigned char *ptr;
	uint64_t len;
} FfiBuffer;

typedef void (*data_event_fn)(const FfiBuffer *);

// nylon_legacy_send builds the message on the C stack and calls the host: the
// payload is borrowed for the call (the host copies it before returning).
static inline void nylon_legacy_send(data_event_fn cb, uint32_t sid, uint32_t method,
                                     const void *p, uint64_t n) {
	FfiBuffer b = {0};
	b.sid = sid;
	b.method = method;
	b.ptr = (const unsigned char *)p;
	b.len = n;
	cb(&b);
}
*/
import "C"

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nylon-transport/nylon-transport/sdk/go/internal/fbs"
)

// Legacy method ids (docs/legacy-abi.md).
const (
	mNext              = 1
	mEnd               = 2
	mGetPayload        = 3
	mSetHeader         = 100
	mRemoveHeader      = 101
	mSetStatus         = 102
	mSetBody           = 103
	mStreamData        = 104
	mStreamEnd         = 105
	mStreamHeader      = 106
	mResponseBody      = 107
	mResponseStatus    = 108
	mResponseBytes     = 109
	mResponseHeaders   = 110
	mResponseDuration  = 111
	mResponseError     = 112
	mRequestBody       = 200
	mRequestHeader     = 201
	mRequestHeaders    = 202
	mRequestURL        = 203
	mRequestPath       = 204
	mRequestQuery      = 205
	mRequestParams     = 206
	mRequestHost       = 207
	mRequestClientIP   = 208
	mRequestMethod     = 209
	mRequestBytes      = 210
	mRequestTimestamp  = 211
	mWsUpgrade         = 300
	mWsSendText        = 301
	mWsSendBinary      = 302
	mWsClose           = 303
	mWsJoin            = 310
	mWsLeave           = 311
	mWsBroadcastText   = 312
	mWsBroadcastBinary = 313
	mWsOnOpen          = 350
	mWsOnText          = 351
	mWsOnBinary        = 352
	mWsOnClose         = 353
	mWsOnError         = 354
	mSdkError          = 0x4E590001 // extension: ends the phase with an error
	maxPayload         = 64 << 20   // the host refuses larger messages
	numberCacheOffset  = 16         // cache slots of numbers: 16 + number id
	cacheSlots         = 32
	defaultQueueLength = 4096
	minimumPoolWorkers = 4
)

// fieldMethods maps a field to its read method.
var fieldMethods = [...]uint32{
	fieldMethod:       mRequestMethod,
	fieldPath:         mRequestPath,
	fieldQuery:        mRequestQuery,
	fieldHost:         mRequestHost,
	fieldClientIP:     mRequestClientIP,
	fieldURL:          mRequestURL,
	fieldRequestBody:  mRequestBody,
	fieldPayload:      mGetPayload,
	fieldParams:       mRequestParams,
	fieldResponseBody: mResponseBody,
	fieldError:        mResponseError,
}

// numberMethods maps a number to its read method.
var numberMethods = [...]uint32{
	numberStatus:        mResponseStatus,
	numberRequestBytes:  mRequestBytes,
	numberTimestamp:     mRequestTimestamp,
	numberDuration:      mResponseDuration,
	numberResponseBytes: mResponseBytes,
}

// event is one entry of a session's queue: a phase start (phase 1..4) or a
// WebSocket event (phase 0, kind and its own copy of the data).
type event struct {
	phase uint8
	kind  wsEvent
	data  []byte
}

// backendSession is the legacy part of a session (see backend.go).
type backendSession struct {
	sid uint32
	cb  C.data_event_fn

	// mu guards everything below up to readMu. It is never held across a
	// call to the host: a reply or an event may come back inside that call,
	// on the same goroutine (rule 4 of docs/legacy-abi.md).
	mu        sync.Mutex
	queue     []event
	scheduled bool // on the run queue or being drained by a worker
	closed    bool
	open      bool // a phase is running (its end not yet sent)
	ws        bool // upgraded: WebSocket events may arrive
	wsClosed  bool // the plugin closed the connection: drop OnClose
	pending   uint32
	replied   bool
	reply     []byte
	arena     []byte // this phase's replies; the reads' views point here
	phaseSeq  uint64
	cache     [cacheSlots]struct {
		seq uint64
		v   string
	}
	reqHeaders  []fbs.Header
	reqSeq      uint64
	respHeaders []fbs.Header
	respSeq     uint64

	readMu sync.Mutex    // one read in flight per session
	wake   chan struct{} // a reply (or the close) for the read in flight

	sendMu  sync.Mutex // serialises messages to the host and guards below
	scratch []byte
}

// builders encode SET_RESPONSE_HEADER messages.
var builders sync.Pool

// ---- Crossings (test hook) ----

var goToC, cToGo atomic.Uint64

// nylon_go_crossings reports the Go->C calls (messages to the host) and the
// C->Go calls (the host calling the plugin's symbols) so far.
//
//export nylon_go_crossings
func nylon_go_crossings(goToCOut, cToGoOut *C.uint64_t) {
	*goToCOut = C.uint64_t(goToC.Load())
	*cToGoOut = C.uint64_t(cToGo.Load())
}

// ---- The session table ----

const shards = 64

var table [shards]struct {
	mu sync.RWMutex
	m  map[uint32]*NylonHttpPluginCtx
	_  [40]byte // keep shards on separate cache lines
}

func lookup(sid uint32) *NylonHttpPluginCtx {
	t := &table[sid%shards]
	t.mu.RLock()
	s := t.m[sid]
	t.mu.RUnlock()
	return s
}

func insert(sid uint32, s *NylonHttpPluginCtx) {
	t := &table[sid%shards]
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[uint32]*NylonHttpPluginCtx)
	}
	t.m[sid] = s
	t.mu.Unlock()
}

func remove(sid uint32) *NylonHttpPluginCtx {
	t := &table[sid%shards]
	t.mu.Lock()
	s := t.m[sid]
	delete(t.m, sid)
	t.mu.Unlock()
	return s
}

// liveSessions counts the sessions in the table (test hook).
//
//export nylon_go_sessions
func nylon_go_sessions() C.ulonglong {
	n := 0
	for i := range table {
		t := &table[i]
		t.mu.RLock()
		n += len(t.m)
		t.mu.RUnlock()
	}
	return C.ulonglong(n)
}

// ---- The worker pool ----

var (
	poolOnce sync.Once
	runq     chan *NylonHttpPluginCtx
	wakeup   chan struct{} // parked workers wait here
	overflow atomic.Uint64 // sessions drained on a goroutine of their own
	spinning atomic.Int32  // 1 while a worker polls runq
)

// spinFor is how long an idle worker polls the run queue before it parks: a
// host that starts the next phase within it gets a worker without a wake-up
// (a futex round trip: tens of microseconds on a busy VM).
const spinFor = 30 * time.Microsecond

// startPool starts max(4, GOMAXPROCS) workers, once.
func startPool() {
	poolOnce.Do(func() {
		runq = make(chan *NylonHttpPluginCtx, defaultQueueLength)
		n := runtime.GOMAXPROCS(0)
		if n < minimumPoolWorkers {
			n = minimumPoolWorkers
		}
		wakeup = make(chan struct{}, n)
		for i := 0; i < n; i++ {
			go worker()
		}
	})
}

// worker runs sessions from runq. At most one idle worker polls runq for a
// while (so a P stays free for the host's calls into Go); the others park on
// wakeup, which push signals only when nobody polls.
func worker() {
	for {
		select {
		case s := <-runq:
			s.drain()
			continue
		default:
		}
		if spinning.CompareAndSwap(0, 1) {
			s := poll()
			spinning.Store(0)
			if s == nil {
				// A push that saw the poller may have come after its
				// last look: look once more now that spinning is 0.
				select {
				case s = <-runq:
				default:
				}
			}
			if s != nil {
				s.drain()
				continue
			}
		}
		<-wakeup
	}
}

// poll polls runq for spinFor; nil when nothing came.
func poll() *NylonHttpPluginCtx {
	start := time.Now()
	for i := 1; ; i++ {
		select {
		case s := <-runq:
			return s
		default:
		}
		if i%32 == 0 {
			if time.Since(start) > spinFor {
				return nil
			}
			runtime.Gosched()
		}
	}
}

// push queues ev for s and schedules s if it is not already.
func (s *NylonHttpPluginCtx) push(ev event) {
	b := &s.be
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.queue = append(b.queue, ev)
	if b.scheduled {
		b.mu.Unlock()
		return
	}
	b.scheduled = true
	b.mu.Unlock()
	select {
	case runq <- s:
		if spinning.Load() == 0 {
			select {
			case wakeup <- struct{}{}:
			default:
			}
		}
	default:
		// Every worker is busy and the run queue is full: drain this
		// session on a goroutine of its own rather than block the host.
		overflow.Add(1)
		go s.drain()
	}
}

// nextInline ends a phase that has no handler at once, on the host's
// thread (the default handler only calls Next), when nothing of the
// session's is queued or running before it: no worker is woken for it.
func (s *NylonHttpPluginCtx) nextInline() bool {
	b := &s.be
	b.mu.Lock()
	if b.scheduled || len(b.queue) > 0 || b.closed || b.open {
		b.mu.Unlock()
		return false
	}
	b.open, b.ws, b.wsClosed = true, false, false
	b.phaseSeq++
	b.freshArena()
	b.mu.Unlock()
	_ = s.beFinish(flowNext)
	return true
}

// drain runs s's queued events, one at a time, in order.
func (s *NylonHttpPluginCtx) drain() {
	b := &s.be
	for {
		b.mu.Lock()
		if b.closed || len(b.queue) == 0 {
			b.queue = b.queue[:0]
			b.scheduled = false
			b.mu.Unlock()
			return
		}
		ev := b.queue[0]
		b.queue[0] = event{}
		b.queue = b.queue[1:]
		if len(b.queue) == 0 {
			b.queue = b.queue[:0:cap(b.queue)]
		}
		if ev.phase != 0 {
			b.open, b.ws, b.wsClosed = true, false, false
			b.phaseSeq++
			b.freshArena()
		}
		b.mu.Unlock()
		if ev.phase != 0 {
			if panicked, msg := s.runPhase(int(ev.phase)); panicked {
				s.failPhase(msg)
			}
			continue
		}
		b.mu.Lock()
		skip := !b.ws || (ev.kind == wsClose && b.wsClosed)
		b.phaseSeq++
		b.freshArena()
		b.mu.Unlock()
		if skip {
			continue
		}
		panicked, msg := s.runWebSocket(ev.kind, stringOf(ev.data))
		if panicked {
			s.failPhase(msg)
		} else if ev.kind == wsClose {
			// The host ended the phase when the client closed.
			b.mu.Lock()
			b.open, b.ws = false, false
			b.mu.Unlock()
		}
	}
}

// failPhase ends the open phase with an error (a handler panicked).
func (s *NylonHttpPluginCtx) failPhase(msg string) {
	b := &s.be
	b.mu.Lock()
	open := b.open && !b.closed
	b.open, b.ws = false, false
	b.mu.Unlock()
	if open {
		b.send(mSdkError, msg, "")
	}
}

// ---- The six symbols ----

//export initialize
func initialize(config *C.char, length C.int) {
	cToGo.Add(1)
	startPool()
	n := int(length)
	if n < 0 {
		n = 0
	}
	func() {
		defer func() { _ = recover() }()
		// Copied: the host's bytes are valid only during this call.
		pluginInitialize(C.GoBytes(unsafe.Pointer(config), C.int(n)))
	}()
}

//export register_session_stream
func register_session_stream(sid C.uint32_t, entry *C.char, length C.uint32_t, cb C.data_event_fn) (accepted C.uint8_t) {
	cToGo.Add(1)
	startPool()
	defer func() {
		if r := recover(); r != nil {
			accepted = 0
		}
	}()
	id, ok := entryIndex(viewString(unsafe.Pointer(entry), int(length)))
	if !ok || cb == nil {
		return 0
	}
	s := &NylonHttpPluginCtx{}
	s.be.sid = uint32(sid)
	s.be.cb = cb
	s.be.wake = make(chan struct{}, 1)
	// Sized for a typical session's replies: one allocation, not a
	// doubling per few replies.
	s.be.arena = make([]byte, 0, 512)
	// The entry's AddPhaseHandler function runs here, on the host's thread,
	// as upstream's does.
	if !s.open(id, int32(uint32(sid))) {
		return 0
	}
	insert(uint32(sid), s)
	return 1
}

//export event_stream
func event_stream(buf *C.FfiBuffer) {
	cToGo.Add(1)
	if buf == nil {
		return
	}
	s := lookup(uint32(buf.sid))
	if s == nil {
		return
	}
	n := uint64(buf.len)
	if n > maxPayload {
		return
	}
	var data []byte
	if n > 0 && buf.ptr != nil {
		data = viewBytes(unsafe.Pointer(buf.ptr), int(n))
	}
	if p := uint8(buf.phase); p >= 1 && p <= 4 {
		if !s.hasHandler(int(p)) && s.nextInline() {
			return
		}
		s.push(event{phase: p})
		return
	}
	switch m := uint32(buf.method); m {
	case mWsOnOpen, mWsOnText, mWsOnBinary, mWsOnClose, mWsOnError:
		kind := [...]wsEvent{wsOpen, wsText, wsBinary, wsClose, wsError}[m-mWsOnOpen]
		var own []byte
		if len(data) > 0 {
			own = append(make([]byte, 0, len(data)), data...)
		}
		s.push(event{kind: kind, data: own})
	default:
		s.be.deliver(m, data)
	}
}

//export close_session_stream
func close_session_stream(sid C.uint32_t) {
	cToGo.Add(1)
	s := remove(uint32(sid))
	if s == nil {
		return
	}
	b := &s.be
	b.mu.Lock()
	b.closed, b.open, b.ws = true, false, false
	b.queue = nil
	wake := b.pending != 0
	b.pending, b.replied, b.reply = 0, false, nil
	b.mu.Unlock()
	if wake {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

//export shutdown
func shutdown() {
	cToGo.Add(1)
	defer func() { _ = recover() }()
	pluginShutdown()
}

//export plugin_free
func plugin_free(p *C.uchar) {
	// Never called by a host: no message hands plugin memory over.
	C.free(unsafe.Pointer(p))
}

// freshArena starts a new arena for a phase or a WebSocket event; b.mu is
// held. The old one is never written again: a string a read returned stays
// valid for as long as the plugin keeps it (upstream's reads returned
// copies, and plugins keep them in closures across phases), and the garbage
// collector frees the old arena once nothing refers to it.
func (b *backendSession) freshArena() {
	if len(b.arena) > 0 {
		b.arena = make([]byte, 0, cap(b.arena))
	}
}

// ---- Messages ----

// send sends one message (a, then b, as one payload when b is not empty).
func (b *backendSession) send(method uint32, a, bb string) {
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	b.sendLocked(method, a, bb)
}

// sendLocked is send with sendMu held.
func (b *backendSession) sendLocked(method uint32, a, bb string) {
	var p unsafe.Pointer
	n := len(a)
	switch {
	case bb != "":
		b.scratch = append(append(b.scratch[:0], a...), bb...)
		p, n = unsafe.Pointer(&b.scratch[0]), len(b.scratch)
	case a != "":
		p = stringPtr(a)
	}
	goToC.Add(1)
	C.nylon_legacy_send(b.cb, C.uint32_t(b.sid), C.uint32_t(method), p, C.uint64_t(n))
}

// deliver hands a reply to the read waiting for it (from event_stream, on
// the host's thread, possibly inside the read's own call to the host).
func (b *backendSession) deliver(method uint32, data []byte) {
	b.mu.Lock()
	if b.pending != method || b.replied || b.closed {
		// No read waits for it: a host bug, or a read the close ended.
		b.mu.Unlock()
		return
	}
	start := len(b.arena)
	b.arena = append(b.arena, data...)
	b.reply = b.arena[start:len(b.arena):len(b.arena)]
	b.replied = true
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// read asks the host for method and waits for the reply: a view of this
// phase's arena. ok is false when no phase is running or the session closed.
func (s *NylonHttpPluginCtx) read(method uint32, arg string) (reply []byte, ok bool) {
	b := &s.be
	b.readMu.Lock()
	defer b.readMu.Unlock()
	b.mu.Lock()
	if !b.open || b.closed {
		b.mu.Unlock()
		return nil, false
	}
	b.pending, b.replied, b.reply = method, false, nil
	b.mu.Unlock()
	b.send(method, arg, "")
	<-b.wake
	b.mu.Lock()
	reply, ok = b.reply, b.replied
	b.pending, b.replied, b.reply = 0, false, nil
	b.mu.Unlock()
	return reply, ok
}

// cached returns slot's value if it was read in this phase.
func (b *backendSession) cached(slot int) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := &b.cache[slot]
	if c.seq == b.phaseSeq && b.open {
		return c.v, true
	}
	return "", false
}

// readCached reads method once per phase into slot.
func (s *NylonHttpPluginCtx) readCached(slot int, method uint32) (string, bool) {
	b := &s.be
	if v, ok := b.cached(slot); ok {
		return v, true
	}
	r, ok := s.read(method, "")
	if !ok {
		return "", false
	}
	v := stringOf(r)
	b.mu.Lock()
	b.cache[slot].seq, b.cache[slot].v = b.phaseSeq, v
	b.mu.Unlock()
	return v, true
}

// parseDecimal reads the host's ASCII decimal (an optional '-', digits).
func parseDecimal(s string) uint64 {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0
		}
		v = v*10 + uint64(c-'0')
	}
	if neg {
		return uint64(-int64(v))
	}
	return v
}

// ---- The backend contract (see backend.go) ----

func (s *NylonHttpPluginCtx) beField(f field) (string, bool) {
	if f < fieldMethod || f > fieldError {
		return "", false
	}
	return s.readCached(int(f), fieldMethods[f])
}

func (s *NylonHttpPluginCtx) beNumber(n number) (uint64, bool) {
	if n < numberStatus || n > numberResponseBytes {
		return 0, false
	}
	v, ok := s.readCached(numberCacheOffset+int(n), numberMethods[n])
	if !ok {
		return 0, false
	}
	return parseDecimal(v), true
}

// headers decodes the request (or response) headers once per phase.
func (s *NylonHttpPluginCtx) headers(response bool) ([]fbs.Header, bool) {
	b := &s.be
	b.mu.Lock()
	if b.open {
		if !response && b.reqSeq == b.phaseSeq {
			h := b.reqHeaders
			b.mu.Unlock()
			return h, true
		}
		if response && b.respSeq == b.phaseSeq {
			h := b.respHeaders
			b.mu.Unlock()
			return h, true
		}
	}
	b.mu.Unlock()
	method := uint32(mRequestHeaders)
	if response {
		method = mResponseHeaders
	}
	r, ok := s.read(method, "")
	if !ok {
		return nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if response {
		if b.respHeaders == nil {
			b.respHeaders = make([]fbs.Header, 0, 16)
		}
		b.respHeaders, _ = fbs.AppendHeaders(b.respHeaders[:0], r)
		b.respSeq = b.phaseSeq
		return b.respHeaders, true
	}
	if b.reqHeaders == nil {
		b.reqHeaders = make([]fbs.Header, 0, 16)
	}
	b.reqHeaders, _ = fbs.AppendHeaders(b.reqHeaders[:0], r)
	b.reqSeq = b.phaseSeq
	return b.reqHeaders, true
}

func (s *NylonHttpPluginCtx) beHeader(name string) (string, bool) {
	// Answered from the request's header list (decoded once per phase; the
	// list names every header): a name that is not in it is absent, with no
	// read of its own (the original host never answers READ_REQUEST_HEADER
	// for an absent header, which hangs the upstream SDK). Only a value the
	// list gives as "" (empty, or not visible ASCII, which the host sends as
	// "") is asked for with READ_REQUEST_HEADER, which then gets an answer.
	hs, ok := s.headers(false)
	if !ok {
		return "", false
	}
	for _, h := range hs {
		if equalFold(stringOf(h.Key), name) {
			if len(h.Value) > 0 {
				return stringOf(h.Value), true
			}
			r, ok := s.read(mRequestHeader, name)
			return stringOf(r), ok
		}
	}
	return "", true
}

func (s *NylonHttpPluginCtx) beHeaderAt(i int) (string, string, bool) {
	return s.headerAt(i, false)
}

func (s *NylonHttpPluginCtx) beResponseHeaderAt(i int) (string, string, bool) {
	return s.headerAt(i, true)
}

func (s *NylonHttpPluginCtx) headerAt(i int, response bool) (string, string, bool) {
	hs, ok := s.headers(response)
	if !ok || i < 0 || i >= len(hs) {
		return "", "", false
	}
	return stringOf(hs[i].Key), stringOf(hs[i].Value), true
}

func (s *NylonHttpPluginCtx) beCommand(c command, a, bb string, n uint32) error {
	b := &s.be
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	b.mu.Lock()
	live := b.open && !b.closed
	if live && c == cmdWsClose {
		// Ends the phase: nothing may follow, and no OnClose.
		b.open, b.ws, b.wsClosed = false, false, true
	}
	if live && c == cmdWsUpgrade {
		// Before the message: the host may send OnOpen at once, even
		// inside this call, and a handler that upgrades from a goroutine of
		// its own is not running on the session's worker.
		b.ws = true
	}
	b.mu.Unlock()
	if !live {
		return errClosed
	}
	switch c {
	case cmdSetHeader:
		// The message is only borrowed by the call (the host copies it),
		// so the builder goes back to the pool right after.
		fb, _ := builders.Get().(*fbs.Builder)
		if fb == nil {
			fb = fbs.NewBuilder(128)
		}
		b.sendLocked(mSetHeader, stringOf(fb.HeaderKV(a, bb)), "")
		builders.Put(fb)
	case cmdRemoveHeader:
		b.sendLocked(mRemoveHeader, a, "")
	case cmdSetStatus:
		st := [2]byte{byte(n >> 8), byte(n)}
		b.sendLocked(mSetStatus, stringOf(st[:]), "")
	case cmdSetBody:
		b.sendLocked(mSetBody, a, "")
	case cmdStreamHeader:
		b.sendLocked(mStreamHeader, "", "")
	case cmdStreamWrite:
		b.sendLocked(mStreamData, a, "")
	case cmdWsUpgrade:
		b.sendLocked(mWsUpgrade, "", "")
	case cmdWsSend:
		m := uint32(mWsSendText)
		if wsEvent(n) == wsBinary {
			m = mWsSendBinary
		}
		b.sendLocked(m, a, "")
	case cmdWsClose:
		b.sendLocked(mWsClose, "", "")
	case cmdWsRoom:
		m := uint32(mWsLeave)
		if n == 1 {
			m = mWsJoin
		}
		b.sendLocked(m, a, "")
	case cmdWsBroadcast:
		m := uint32(mWsBroadcastText)
		if wsEvent(n) == wsBinary {
			m = mWsBroadcastBinary
		}
		b.scratch = append(append(append(b.scratch[:0], a...), 0), bb...)
		b.sendLocked(m, stringOf(b.scratch), "")
	}
	return nil
}

func (s *NylonHttpPluginCtx) beFinish(f flow) error {
	b := &s.be
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	b.mu.Lock()
	if !b.open || b.closed {
		b.mu.Unlock()
		return errClosed
	}
	if f == flowWebSocket && b.ws {
		// After the upgrade the phase goes on: the connection's events
		// arrive as WebSocket events, and it ends with Close (303) or the
		// client's close.
		b.mu.Unlock()
		return nil
	}
	if b.ws || f == flowWebSocket {
		b.mu.Unlock()
		return errClosed
	}
	b.open = false
	b.mu.Unlock()
	switch f {
	case flowNext:
		b.sendLocked(mNext, "", "")
	case flowEnd:
		b.sendLocked(mEnd, "", "")
	case flowStreamEnd:
		b.sendLocked(mStreamEnd, "", "")
	}
	return nil
}

// equalFold is an ASCII case-insensitive comparison (header names).
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
