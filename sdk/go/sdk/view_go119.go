//go:build !go1.20

package sdk

// Zero-copy views for Go 1.19, which lacks unsafe.String and unsafe.Slice:
// the headers are written by hand. view_go120.go is the same for Go 1.20+.

import (
	"reflect"
	"unsafe"
)

// viewString is the n bytes at p as a string, without a copy. The caller
// guarantees the bytes stay valid and unchanged while the string is used.
func viewString(p unsafe.Pointer, n int) string {
	if n == 0 {
		return ""
	}
	var s string
	h := (*reflect.StringHeader)(unsafe.Pointer(&s))
	h.Data = uintptr(p)
	h.Len = n
	return s
}

// stringOf is b as a string, without a copy (b must not change while used).
func stringOf(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return *(*string)(unsafe.Pointer(&b))
}

// bytesOf is s as a byte slice, without a copy; never write to it.
func bytesOf(s string) []byte {
	if s == "" {
		return nil
	}
	var b []byte
	h := (*reflect.SliceHeader)(unsafe.Pointer(&b))
	h.Data = (*reflect.StringHeader)(unsafe.Pointer(&s)).Data
	h.Len = len(s)
	h.Cap = len(s)
	return b
}

// viewBytes is the n bytes at p (memory outside the Go heap) as a slice.
func viewBytes(p unsafe.Pointer, n int) []byte {
	return (*[1 << 30]byte)(p)[:n:n]
}

// stringPtr is the address of s's bytes (for a C call that copies them).
func stringPtr(s string) unsafe.Pointer {
	return unsafe.Pointer((*reflect.StringHeader)(unsafe.Pointer(&s)).Data)
}
