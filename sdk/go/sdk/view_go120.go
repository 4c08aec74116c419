//go:build go1.20

package sdk

// Zero-copy views for Go 1.20+ (view_go119.go is the Go 1.19 version).

import "unsafe"

// viewString is the n bytes at p as a string, without a copy. The caller
// guarantees the bytes stay valid and unchanged while the string is used.
func viewString(p unsafe.Pointer, n int) string {
	if n == 0 {
		return ""
	}
	return unsafe.String((*byte)(p), n)
}

// stringOf is b as a string, without a copy (b must not change while used).
func stringOf(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// bytesOf is s as a byte slice, without a copy; never write to it.
func bytesOf(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// viewBytes is the n bytes at p (memory outside the Go heap) as a slice.
func viewBytes(p unsafe.Pointer, n int) []byte {
	return unsafe.Slice((*byte)(p), n)
}

// stringPtr is the address of s's bytes (for a C call that copies them).
func stringPtr(s string) unsafe.Pointer {
	return unsafe.Pointer(unsafe.StringData(s))
}
