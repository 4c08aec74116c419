// Command todaystyle is a legacy-ABI Nylon plugin written the way the
// upstream Go SDK works today, to measure what that style costs (the bench
// row request_go, baseline column). It is a reproduction written for this
// repository, not upstream's code. Its costs are the upstream SDK's:
//
//   - a goroutine started for every phase start from the host;
//   - every read: lock the session's mutex, send the request from a fresh
//     goroutine, wait on a condition variable for the reply;
//   - every message to the host: C.malloc, copy, call, free;
//   - the request headers FlatBuffers-decoded into a new map on every read;
//   - the payload json.Unmarshal'ed into a map on every GetPayload;
//   - a new FlatBuffers builder for every SetHeader.
//
// It does not reproduce the upstream bugs that break correctness: a read
// waits for its own reply (a reply flag, so an empty reply is not answered
// with stale data and a reply never wakes the wrong reader), and a session
// is freed when the host closes it.
//
// Its one entry, scenario, runs the logic of examples/rust_plugin.rs's and
// examples/v2_plugin.rs's scenario. Build with
// go build -buildmode=c-shared -o libtodaystyle.so ./internal/todaystyle.
package main

/*
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
	uint32_t sid;
	uint8_t phase;
	uint32_t method;
	const unsigned char *ptr;
	uint64_t len;
} FfiBuffer;

typedef void (*data_event_fn)(const FfiBuffer *);

static inline void call_event_method(data_event_fn cb, const FfiBuffer *buf) { cb(buf); }
*/
import "C"

import (
	"encoding/json"
	"strconv"
	"sync"
	"unsafe"

	"github.com/nylon-transport/nylon-transport/sdk/go/internal/fbs"
)

const (
	methodNext           = 1
	methodEnd            = 2
	methodGetPayload     = 3
	methodSetHeader      = 100
	methodSetStatus      = 102
	methodSetBody        = 103
	methodResponseStatus = 108
	methodDuration       = 111
	methodRequestHeader  = 201
	methodRequestHeaders = 202
	methodRequestPath    = 204
	methodClientIP       = 208
)

// session is the upstream SDK's per-session context: one mutex and one
// condition variable shared by every read of every phase.
type session struct {
	sid  uint32
	cb   C.data_event_fn
	mu   sync.Mutex
	cond *sync.Cond
	data map[uint32][]byte
	got  map[uint32]bool
	// closed is set by close_session_stream; readers stop waiting.
	closed bool
}

var sessions sync.Map // uint32 -> *session

func main() {}

//export initialize
func initialize(config *C.char, length C.int) {
	// The upstream SDK copies and json.Unmarshals the config; the scenario
	// has none to use.
	raw := C.GoBytes(unsafe.Pointer(config), length)
	var cfg map[string]interface{}
	_ = json.Unmarshal(raw, &cfg)
}

//export register_session_stream
func register_session_stream(sid C.uint32_t, entry *C.char, length C.uint32_t, cb C.data_event_fn) C.uint8_t {
	if C.GoStringN(entry, C.int(length)) != "scenario" {
		return 0
	}
	s := &session{sid: uint32(sid), cb: cb, data: map[uint32][]byte{}, got: map[uint32]bool{}}
	s.cond = sync.NewCond(&s.mu)
	sessions.Store(uint32(sid), s)
	return 1
}

//export event_stream
func event_stream(buf *C.FfiBuffer) {
	v, ok := sessions.Load(uint32(buf.sid))
	if !ok {
		return
	}
	s := v.(*session)
	switch buf.phase {
	case 1, 2, 3, 4:
		// A goroutine per event, as the upstream SDK does.
		go runPhase(s, int(buf.phase))
	default:
		s.mu.Lock()
		method := uint32(buf.method)
		if buf.len > 0 {
			s.data[method] = C.GoBytes(unsafe.Pointer(buf.ptr), C.int(buf.len))
		} else {
			s.data[method] = nil
		}
		s.got[method] = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

//export close_session_stream
func close_session_stream(sid C.uint32_t) {
	if v, ok := sessions.LoadAndDelete(uint32(sid)); ok {
		s := v.(*session)
		// Wake readers still waiting: they see an empty reply.
		s.mu.Lock()
		for m := range s.got {
			s.got[m] = true
		}
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

//export shutdown
func shutdown() {}

//export plugin_free
func plugin_free(p *C.uchar) { C.free(unsafe.Pointer(p)) }

// send copies data into C memory and hands it to the host, as the upstream
// SDK's RequestMethod does.
func (s *session) send(method uint32, data []byte) {
	var buf C.FfiBuffer
	buf.sid = C.uint32_t(s.sid)
	buf.method = C.uint32_t(method)
	if len(data) > 0 {
		p := C.malloc(C.size_t(len(data)))
		C.memcpy(p, unsafe.Pointer(&data[0]), C.size_t(len(data)))
		buf.ptr = (*C.uchar)(p)
		buf.len = C.uint64_t(len(data))
		C.call_event_method(s.cb, &buf)
		C.free(p)
		return
	}
	C.call_event_method(s.cb, &buf)
}

// read asks the host for method's data and waits for the reply under the
// session's mutex and condition variable, the request going out from a
// fresh goroutine as upstream's does.
func (s *session) read(method uint32, arg []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.got[method] = false
	go s.send(method, arg)
	for !s.got[method] && !s.closed {
		s.cond.Wait()
	}
	d := s.data[method]
	delete(s.got, method)
	delete(s.data, method)
	return d
}

func (s *session) readString(method uint32) string { return string(s.read(method, nil)) }

func (s *session) readInt(method uint32) int64 {
	n, _ := strconv.ParseInt(s.readString(method), 10, 64)
	return n
}

// payload is GetPayload: read, then json.Unmarshal into a map, every call.
func (s *session) payload() map[string]interface{} {
	var m map[string]interface{}
	_ = json.Unmarshal(s.read(methodGetPayload, nil), &m)
	return m
}

// headers is Request().Headers().GetAll(): read and decode into a new map.
func (s *session) headers() map[string]string {
	hs, err := fbs.AppendHeaders(nil, s.read(methodRequestHeaders, nil))
	m := make(map[string]string, len(hs))
	if err != nil {
		return m
	}
	for _, h := range hs {
		m[string(h.Key)] = string(h.Value)
	}
	return m
}

// setHeader builds the HeaderKeyValue with a new builder, as upstream does.
func (s *session) setHeader(k, v string) {
	s.send(methodSetHeader, fbs.EncodeHeaderKV(k, v))
}

// next ends the phase from a fresh goroutine, as upstream's Next() does.
func (s *session) next() { go s.send(methodNext, nil) }

func (s *session) fail(msg string) {
	s.send(methodSetStatus, []byte{500 >> 8, 500 & 0xff})
	s.send(methodSetBody, []byte(msg))
	go s.send(methodEnd, nil)
}

func runPhase(s *session, phase int) {
	switch phase {
	case 1:
		requestFilter(s)
	case 2:
		responseFilter(s)
	case 4:
		logging(s)
	default:
		s.next()
	}
}

// The scenario, line for line the Rust examples' logic.
func requestFilter(s *session) {
	payload := s.payload()
	user, _ := payload["user"].(string)
	limit, _ := payload["limit"].(float64)
	path := s.readString(methodRequestPath)
	agent := string(s.read(methodRequestHeader, []byte("user-agent")))
	count, bytes := 0, 0
	for k, v := range s.headers() {
		count++
		bytes += len(k) + len(v)
	}
	if path == "" || agent == "" || count != 8 || bytes == 0 || user == "" || limit == 0 {
		s.fail("scenario request is incomplete")
		return
	}
	s.setHeader("x-scenario", "1")
	s.setHeader("x-user", "alice")
	s.next()
}

func responseFilter(s *session) {
	status := s.readInt(methodResponseStatus)
	class := "ok"
	if status >= 400 {
		class = "error"
	}
	s.setHeader("x-status-class", class)
	s.next()
}

func logging(s *session) {
	_ = s.readInt(methodDuration)
	_ = s.readString(methodClientIP)
	s.next()
}
