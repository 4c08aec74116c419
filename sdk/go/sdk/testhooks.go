package sdk

import "C"
import "runtime"

// nylon_go_mallocs is a test hook: the Go runtime's count of heap
// allocations so far (runtime.MemStats.Mallocs). A host test calls it around
// a loop of requests to check that the SDK does not allocate per request.
//
//export nylon_go_mallocs
func nylon_go_mallocs() C.ulonglong {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return C.ulonglong(m.Mallocs)
}
