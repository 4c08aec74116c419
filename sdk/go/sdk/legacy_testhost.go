//go:build nylon_legacy && nylon_testhost

package sdk

// The Go side of the test host (legacy_testhost.c): test files cannot use
// cgo themselves.

/*
#include <stdint.h>
#include <stdlib.h>
void th_set_threaded(int on);
int th_open(uint32_t sid, const char *entry, uint32_t n);
void th_phase(uint32_t sid, uint8_t phase);
void th_event(uint32_t sid, uint32_t method, const char *p, uint64_t n);
void th_close(uint32_t sid);
uint32_t th_ends_of(uint32_t sid);
uint32_t th_last_of(uint32_t sid);
*/
import "C"

import "unsafe"

func thSetThreaded(on bool) {
	v := 0
	if on {
		v = 1
	}
	C.th_set_threaded(C.int(v))
}

func thOpen(sid uint32, entry string) bool {
	e := C.CString(entry)
	defer C.free(unsafe.Pointer(e))
	return C.th_open(C.uint32_t(sid), e, C.uint32_t(len(entry))) != 0
}

func thPhase(sid uint32, phase uint8) { C.th_phase(C.uint32_t(sid), C.uint8_t(phase)) }

func thEvent(sid, method uint32, data string) {
	p := C.CString(data)
	defer C.free(unsafe.Pointer(p))
	C.th_event(C.uint32_t(sid), C.uint32_t(method), p, C.uint64_t(len(data)))
}

func thClose(sid uint32)          { C.th_close(C.uint32_t(sid)) }
func thEnds(sid uint32) uint32    { return uint32(C.th_ends_of(C.uint32_t(sid))) }
func thLastEnd(sid uint32) uint32 { return uint32(C.th_last_of(C.uint32_t(sid))) }
