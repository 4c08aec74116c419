package fbs

import (
	"encoding/binary"
	"errors"
)

// Header is one header: views of the decoded buffer (no copy).
type Header struct {
	Key   []byte
	Value []byte
}

// ErrMalformed is returned for a buffer that is not a valid message: an
// offset out of bounds or misaligned, a missing required field, a string
// without room for its terminator.
var ErrMalformed = errors.New("malformed flatbuffer")

// reader checks every access against the buffer; positions are ints, and a
// uint32 read from the buffer always fits one on the 64-bit targets the
// ABI supports (LP64).
type reader []byte

func (r reader) u16(at int) (int, bool) {
	if at < 0 || at+2 > len(r) {
		return 0, false
	}
	return int(binary.LittleEndian.Uint16(r[at:])), true
}

func (r reader) u32(at int) (int, bool) {
	if at < 0 || at+4 > len(r) || at%4 != 0 {
		return 0, false
	}
	return int(binary.LittleEndian.Uint32(r[at:])), true
}

// table checks the table at t and its vtable; returns the vtable's position.
func (r reader) table(t int) (vt int, ok bool) {
	soff, ok := r.u32(t)
	if !ok {
		return 0, false
	}
	vt = t - int(int32(uint32(soff)))
	if vt < 0 || vt%2 != 0 {
		return 0, false
	}
	vtLen, ok := r.u16(vt)
	if !ok || vtLen < 4 || vtLen%2 != 0 || vt+vtLen > len(r) {
		return 0, false
	}
	size, ok := r.u16(vt + 2)
	if !ok || size < 4 || t+size > len(r) {
		return 0, false
	}
	return vt, true
}

// offsetField follows a required uoffset field of the table at t.
func (r reader) offsetField(t, vt, voff int) (int, bool) {
	vtLen, _ := r.u16(vt)
	if voff+2 > vtLen {
		return 0, false
	}
	fo, _ := r.u16(vt + voff)
	size, _ := r.u16(vt + 2)
	if fo == 0 || fo+4 > size {
		return 0, false
	}
	at := t + fo
	off, ok := r.u32(at)
	if !ok {
		return 0, false
	}
	target := at + off
	if off == 0 || target >= len(r) {
		return 0, false
	}
	return target, true
}

// str reads a string at s: its bytes, with room for the terminator.
func (r reader) str(s int) ([]byte, bool) {
	n, ok := r.u32(s)
	if !ok || n > len(r) || s+4+n+1 > len(r) {
		return nil, false
	}
	return r[s+4 : s+4+n : s+4+n], true
}

func (r reader) root() (int, bool) {
	off, ok := r.u32(0)
	if !ok || off == 0 || off >= len(r) {
		return 0, false
	}
	return off, true
}

func (r reader) headerKV(t int) (Header, bool) {
	vt, ok := r.table(t)
	if !ok {
		return Header{}, false
	}
	ks, ok := r.offsetField(t, vt, vtKey)
	if !ok {
		return Header{}, false
	}
	vs, ok := r.offsetField(t, vt, vtValue)
	if !ok {
		return Header{}, false
	}
	k, ok := r.str(ks)
	if !ok {
		return Header{}, false
	}
	v, ok := r.str(vs)
	if !ok {
		return Header{}, false
	}
	return Header{Key: k, Value: v}, true
}

// DecodeHeaderKV decodes a HeaderKeyValue root. The key and value are views
// of buf.
func DecodeHeaderKV(buf []byte) (key, value []byte, err error) {
	r := reader(buf)
	t, ok := r.root()
	if !ok {
		return nil, nil, ErrMalformed
	}
	h, ok := r.headerKV(t)
	if !ok {
		return nil, nil, ErrMalformed
	}
	return h.Key, h.Value, nil
}

// AppendHeaders decodes a NylonHttpHeaders root and appends its headers, in
// order, to dst. Keys and values are views of buf. On error dst is returned
// unchanged (nothing is appended).
func AppendHeaders(dst []Header, buf []byte) ([]Header, error) {
	r := reader(buf)
	t, ok := r.root()
	if !ok {
		return dst, ErrMalformed
	}
	vt, ok := r.table(t)
	if !ok {
		return dst, ErrMalformed
	}
	v, ok := r.offsetField(t, vt, vtHeaders)
	if !ok {
		return dst, ErrMalformed
	}
	n, ok := r.u32(v)
	if !ok || n > len(r)/4 || v+4+4*n > len(r) {
		return dst, ErrMalformed
	}
	start := len(dst)
	for i := 0; i < n; i++ {
		at := v + 4 + 4*i
		off, _ := r.u32(at)
		if off == 0 {
			return dst[:start], ErrMalformed
		}
		h, ok := r.headerKV(at + off)
		if !ok {
			return dst[:start], ErrMalformed
		}
		dst = append(dst, h)
	}
	return dst, nil
}
