//go:build !nylon_legacy

package sdk

// The v2 backend's Go half (v2_glue.c is the C half).
//
// A phase is one call from the host, on the host's thread: t_phase (C) calls
// ngoGoPhase, which runs the Go handler synchronously. When the handler
// returns having ended the phase (Next, End, a stream's End, a WebSocket
// upgrade), ngoGoPhase returns the flow and C replays the buffered commands to
// the host. When it returns without ending the phase, the phase goes on on
// another goroutine: ngoGoPhase detaches the call (still on the host's
// thread, as the ABI requires) and returns PENDING; the Next (or End, ...)
// that comes later, from any goroutine, replays the commands and completes
// the call.
//
// Reads are answered from the call's snapshot in C memory (see v2_glue.c), as
// strings that view host memory: valid until the phase call ends (for a
// detached call, until it completes). Clone copies one to keep it.

/*
#cgo CFLAGS: -O2 -std=gnu11 -Wall
#include <stdlib.h>
#include "v2_glue.h"
*/
import "C"

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// The states of a session's current call.
const (
	callIdle     uint8 = iota // no live call: reads are empty, commands errClosed
	callRunning               // inside the host's phase (or ws_event) call
	callDetached              // handed to another goroutine; ends with beFinish
)

// backendSession is the v2 part of a session (see backend.go).
type backendSession struct {
	mu    sync.Mutex
	cs    *C.ngo_session
	state uint8
	flow  flow
}

// ---- Sessions: Go state bound to pooled C objects ----

var (
	slotsMu sync.Mutex
	slots   atomic.Pointer[[]*NylonHttpPluginCtx]
)

// sessionFor returns the Go state of the C session cs, binding a new one the
// first time this (pooled, never freed) C object is used.
func sessionFor(cs *C.ngo_session) *NylonHttpPluginCtx {
	if cs.slot != 0 {
		return (*slots.Load())[cs.slot-1]
	}
	slotsMu.Lock()
	defer slotsMu.Unlock()
	var cur []*NylonHttpPluginCtx
	if p := slots.Load(); p != nil {
		cur = *p
	}
	s := &NylonHttpPluginCtx{}
	s.be.cs = cs
	next := make([]*NylonHttpPluginCtx, len(cur)+1, len(cur)+1)
	copy(next, cur)
	next[len(cur)] = s
	slots.Store(&next)
	cs.slot = C.uint32_t(len(next))
	return s
}

// ---- Entry points from C ----

//export ngoGoInit
func ngoGoInit(config *C.uint8_t, n C.size_t) C.int32_t {
	ok := true
	func() {
		defer func() {
			if r := recover(); r != nil {
				ok = false
			}
		}()
		pluginInitialize(bytesOf(viewString(unsafe.Pointer(config), int(n))))
	}()
	if !ok {
		return C.NYLON_V2_ERROR
	}
	return C.NYLON_V2_OK
}

//export ngoGoShutdown
func ngoGoShutdown() {
	defer func() { _ = recover() }()
	pluginShutdown()
}

//export ngoGoPhase
func ngoGoPhase(cs *C.ngo_session, phase C.uint32_t, flowOut *C.uint32_t) C.int32_t {
	s := sessionFor(cs)
	b := &s.be
	p := int(phase)
	if cs.opened == 0 {
		if !s.open(int(cs.entry), int32(cs.host_session)) {
			b.fail("the entry's AddPhaseHandler function panicked")
			return C.NYLON_V2_ERROR
		}
		handlersOf(s, cs)
		cs.opened = 1
		if !s.hasHandler(p) {
			*flowOut = C.uint32_t(flowNext)
			return C.NYLON_V2_OK
		}
	}
	if p < 1 || p > 4 {
		return C.NYLON_V2_INVALID
	}
	b.mu.Lock()
	b.state, b.flow = callRunning, 0
	b.mu.Unlock()

	panicked, msg := s.runPhase(p)
	// A handler may set the session's other handlers (upstream reads them
	// at each phase): C skips a phase only if it still has none.
	handlersOf(s, cs)

	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case panicked:
		b.state = callIdle
		b.fail(msg)
		return C.NYLON_V2_PANIC
	case b.flow != 0:
		b.state = callIdle
		*flowOut = C.uint32_t(b.flow)
		return C.NYLON_V2_OK
	default:
		// The handler returned without ending the phase: another goroutine
		// will. Detach here, on the host's thread, before returning PENDING.
		if C.ngo_detach(cs) != C.NYLON_V2_OK {
			b.state = callIdle
			return C.NYLON_V2_ERROR
		}
		b.state = callDetached
		return C.NYLON_V2_PENDING
	}
}

//export ngoGoWsEvent
func ngoGoWsEvent(cs *C.ngo_session, kind C.uint32_t, data *C.uint8_t, n C.size_t) C.int32_t {
	s := sessionFor(cs)
	b := &s.be
	b.mu.Lock()
	b.state, b.flow = callRunning, 0
	b.mu.Unlock()

	panicked, msg := s.runWebSocket(wsEvent(kind), viewString(unsafe.Pointer(data), int(n)))
	handlersOf(s, cs)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.state = callIdle
	if panicked {
		b.fail(msg)
		return C.NYLON_V2_PANIC
	}
	return C.NYLON_V2_OK
}

// handlersOf tells C which phases of s have a Go handler (the others it
// answers NEXT itself, as the default handler would).
func handlersOf(s *NylonHttpPluginCtx, cs *C.ngo_session) {
	var mask C.uint32_t
	for ph := 1; ph <= 4; ph++ {
		if s.hasHandler(ph) {
			mask |= 1 << ph
		}
	}
	cs.handlers = mask
}

// fail records msg as the call's error (a crossing, on the failure path only).
func (b *backendSession) fail(msg string) {
	C.ngo_error(b.cs, (*C.char)(stringPtr(msg)), C.size_t(len(msg)))
}

// ---- The backend contract (see backend.go) ----

// groupOf is the snapshot bit of field f.
func groupOf(f field) C.uint32_t { return 1 << C.uint32_t(f) }

// need makes sure the snapshot has group g; b.mu is held. A detached call
// reads from the host every time instead: the host may give up on it (its
// timeout) at any moment and take the request back, after which a read
// answers nothing rather than a view of memory the request no longer owns.
func (b *backendSession) need(g C.uint32_t) {
	if b.state == callDetached {
		b.cs.have &^= g
	}
	if b.cs.have&g != g {
		C.ngo_fetch(b.cs, g)
	}
}

func (s *NylonHttpPluginCtx) beField(f field) (string, bool) {
	if f < fieldMethod || f > fieldError {
		return "", false
	}
	b := &s.be
	b.mu.Lock()
	if b.state == callIdle {
		b.mu.Unlock()
		return "", false
	}
	b.need(groupOf(f))
	v := b.cs.field[f]
	b.mu.Unlock()
	return viewString(unsafe.Pointer(v.ptr), int(v.len)), true
}

func (s *NylonHttpPluginCtx) beNumber(n number) (uint64, bool) {
	if n < numberStatus || n > numberResponseBytes {
		return 0, false
	}
	b := &s.be
	b.mu.Lock()
	if b.state == callIdle {
		b.mu.Unlock()
		return 0, false
	}
	b.need(C.NGO_G_NUMBERS)
	v := uint64(b.cs.num[n])
	b.mu.Unlock()
	return v, true
}

// pair is header i of a snapshot list (name, value).
func pair(list *C.nylon_v2_str_t, i int) (string, string) {
	p := unsafe.Add(unsafe.Pointer(list), uintptr(2*i)*unsafe.Sizeof(*list))
	name := (*C.nylon_v2_str_t)(p)
	value := (*C.nylon_v2_str_t)(unsafe.Add(p, unsafe.Sizeof(*list)))
	return viewString(unsafe.Pointer(name.ptr), int(name.len)),
		viewString(unsafe.Pointer(value.ptr), int(value.len))
}

func (s *NylonHttpPluginCtx) beHeader(name string) (string, bool) {
	b := &s.be
	b.mu.Lock()
	defer b.mu.Unlock() // (not on the scenario's path: once per request)
	if b.state == callIdle {
		return "", false
	}
	// Answered from the snapshot of the request headers: the host's names
	// are lower-case, so an ASCII case-insensitive match finds what the
	// host's `header` would (its first value).
	b.need(C.NGO_G_REQ_HEADERS)
	cs := b.cs
	for i := 0; i < int(cs.hdr_n); i++ {
		n, v := pair(cs.hdr, i)
		if equalFold(n, name) {
			return v, true
		}
	}
	return "", false
}

func (s *NylonHttpPluginCtx) beHeaderAt(i int) (string, string, bool) {
	return s.headerAt(i, C.NGO_G_REQ_HEADERS)
}

func (s *NylonHttpPluginCtx) beResponseHeaderAt(i int) (string, string, bool) {
	return s.headerAt(i, C.NGO_G_RESP_HEADERS)
}

func (s *NylonHttpPluginCtx) headerAt(i int, g C.uint32_t) (string, string, bool) {
	b := &s.be
	b.mu.Lock()
	if b.state == callIdle || i < 0 {
		b.mu.Unlock()
		return "", "", false
	}
	if i == 0 || b.state != callDetached || b.cs.have&g == 0 {
		// (A detached call refreshes the list when a walk starts.)
		b.need(g)
	}
	list, n := b.cs.hdr, int(b.cs.hdr_n)
	if g == C.NGO_G_RESP_HEADERS {
		list, n = b.cs.rhdr, int(b.cs.rhdr_n)
	}
	if i >= n {
		b.mu.Unlock()
		return "", "", false
	}
	name, value := pair(list, i)
	b.mu.Unlock()
	return name, value, true
}

// The size of a command record's header (C's ngo_cmd).
const cmdHeader = 16

func (s *NylonHttpPluginCtx) beCommand(c command, a, bb string, n uint32) error {
	b := &s.be
	b.mu.Lock()
	if b.state == callIdle {
		b.mu.Unlock()
		return errClosed
	}
	cs := b.cs
	size := (cmdHeader + len(a) + len(bb) + 7) &^ 7
	if int(cs.cmd_cap-cs.cmd_len) < size && C.ngo_grow(cs, C.size_t(size)) == 0 {
		b.mu.Unlock()
		return errClosed
	}
	rec := viewBytes(unsafe.Add(unsafe.Pointer(cs.cmd), uintptr(cs.cmd_len)), size)
	h := (*[4]uint32)(unsafe.Pointer(&rec[0]))
	h[0], h[1], h[2], h[3] = uint32(c), n, uint32(len(a)), uint32(len(bb))
	copy(rec[cmdHeader:], a)
	copy(rec[cmdHeader+len(a):], bb)
	cs.cmd_len += C.size_t(size)
	b.mu.Unlock()
	return nil
}

func (s *NylonHttpPluginCtx) beFinish(f flow) error {
	b := &s.be
	b.mu.Lock()
	if b.state == callRunning && b.flow == 0 {
		b.flow = f
		b.mu.Unlock()
		return nil
	}
	defer b.mu.Unlock()
	switch {
	case b.state == callDetached && b.flow == 0:
		b.flow = f
		b.state = callIdle
		handlersOf(s, b.cs)
		if C.ngo_complete(b.cs, C.NYLON_V2_OK, C.uint32_t(f)) != C.NYLON_V2_OK {
			return errClosed
		}
		return nil
	}
	return errClosed
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

// ---- The table ----

var tableOnce sync.Once

// table builds the plugin table (its entry list) once, from the entries the
// plugin's init functions registered.
func table() *C.nylon_v2_plugin_t {
	tableOnce.Do(func() {
		names := entryNames()
		size := C.size_t(len(names)+1) * C.size_t(unsafe.Sizeof(C.nylon_v2_str_t{}))
		list := (*C.nylon_v2_str_t)(C.calloc(1, size))
		for i, name := range names {
			p := C.CBytes([]byte(name))
			e := (*C.nylon_v2_str_t)(unsafe.Add(unsafe.Pointer(list), uintptr(i)*unsafe.Sizeof(*list)))
			e.ptr = (*C.uint8_t)(p)
			e.len = C.size_t(len(name))
		}
		C.ngo_set_table(list, C.size_t(len(names)))
	})
	return (*C.nylon_v2_plugin_t)(unsafe.Pointer(C.ngo_table()))
}

//export ngoGoTable
func ngoGoTable() *C.nylon_v2_plugin_t {
	return table()
}

// nylon_go_sessions is a test hook: how many Go session objects exist. They
// are bound to pooled C sessions and reused, so this is the peak number of
// sessions open at once, not the number of sessions ever opened.
//
//export nylon_go_sessions
func nylon_go_sessions() C.ulonglong {
	p := slots.Load()
	if p == nil {
		return 0
	}
	return C.ulonglong(len(*p))
}
