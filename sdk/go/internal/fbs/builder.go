// Package fbs encodes and decodes the two FlatBuffers tables of the legacy
// Nylon plugin ABI (schema/plugin.fbs, namespace nylon_plugin):
//
//	table HeaderKeyValue   { key: string (required); value: string (required); }
//	table NylonHttpHeaders { headers: [HeaderKeyValue] (required); }
//
// HeaderKeyValue is the payload of SET_RESPONSE_HEADER (100); NylonHttpHeaders
// is the reply to READ_RESPONSE_HEADERS (110) and READ_REQUEST_HEADERS (202).
// Buffers carry no file identifier and no size prefix.
//
// The encoder builds back to front exactly as the Rust flatbuffers crate's
// FlatBufferBuilder does (alignment, padding, vtable deduplication, the
// minimal finish), so its output is byte for byte the host's: the golden
// files in testdata/ are written by the Rust codec (src/codec/headers.rs) and
// checked by both sides. The decoder bounds-checks every offset and never
// panics on malformed input (FuzzDecode). It uses the standard library only.
package fbs

import "encoding/binary"

// Voffsets of the schema's fields.
const (
	vtKey     = 4 // HeaderKeyValue.key
	vtValue   = 6 // HeaderKeyValue.value
	vtHeaders = 4 // NylonHttpHeaders.headers
)

type fieldLoc struct {
	off uint32 // the field's position, counted from the buffer's end
	id  uint16 // its voffset
}

// Builder is a FlatBuffers builder for the two legacy tables, reusable
// across messages (Reset keeps its memory). Not safe for concurrent use.
type Builder struct {
	buf      []byte // the data lives in buf[head:]
	head     int
	minAlign int
	fields   []fieldLoc
	vtables  []uint32 // positions (from the end) of the vtables written
	tableAt  uint32
	items    []uint32
}

// NewBuilder returns a builder with room for capacity bytes.
func NewBuilder(capacity int) *Builder {
	if capacity < 16 {
		capacity = 16
	}
	return &Builder{buf: make([]byte, capacity), head: capacity}
}

// Reset forgets the message being built, keeping the memory.
func (b *Builder) Reset() {
	b.head = len(b.buf)
	b.minAlign = 0
	b.fields = b.fields[:0]
	b.vtables = b.vtables[:0]
	b.items = b.items[:0]
}

// Bytes is the finished message: a view of the builder's memory, valid
// until the next Reset.
func (b *Builder) Bytes() []byte { return b.buf[b.head:] }

func (b *Builder) used() int { return len(b.buf) - b.head }

// makeSpace moves head down by n bytes, growing the buffer as the Rust
// builder does (doubling, data kept at the end), and zeroes them.
func (b *Builder) makeSpace(n int) int {
	for b.head < n {
		size := 2 * len(b.buf)
		if size == 0 {
			size = 1
		}
		nb := make([]byte, size)
		used := b.used()
		copy(nb[size-used:], b.buf[b.head:])
		b.buf = nb
		b.head = size - used
	}
	b.head -= n
	z := b.buf[b.head : b.head+n]
	for i := range z {
		z[i] = 0
	}
	return b.head
}

func (b *Builder) align(n, alignment int) {
	if alignment > b.minAlign {
		b.minAlign = alignment
	}
	pad := (-(b.used() + n)) & (alignment - 1)
	b.makeSpace(pad)
}

func (b *Builder) pushU32(v uint32) uint32 {
	b.align(4, 4)
	at := b.makeSpace(4)
	binary.LittleEndian.PutUint32(b.buf[at:], v)
	return uint32(b.used())
}

// pushOffset writes a uoffset to the object at off (a position from the end).
func (b *Builder) pushOffset(off uint32) uint32 {
	b.align(4, 4)
	at := b.makeSpace(4)
	binary.LittleEndian.PutUint32(b.buf[at:], uint32(b.used())-off)
	return uint32(b.used())
}

// createString writes a zero-terminated, length-prefixed string.
func (b *Builder) createString(s string) uint32 {
	b.align(len(s)+1, 4)
	b.align(1, 1)
	b.makeSpace(1) // the terminator, zeroed
	at := b.makeSpace(len(s))
	copy(b.buf[at:], s)
	return b.pushU32(uint32(len(s)))
}

func (b *Builder) startTable() {
	b.fields = b.fields[:0]
	b.tableAt = uint32(b.used())
}

func (b *Builder) slotOffset(id uint16, off uint32) {
	b.fields = append(b.fields, fieldLoc{off: b.pushOffset(off), id: id})
}

// endTable writes the vtable, or points at an identical one written before.
func (b *Builder) endTable() uint32 {
	obj := b.pushU32(0xF0F0F0F0)
	vtLen := 4
	for _, f := range b.fields {
		if int(f.id)+2 > vtLen {
			vtLen = int(f.id) + 2
		}
	}
	at := b.makeSpace(vtLen)
	vt := b.buf[at : at+vtLen]
	binary.LittleEndian.PutUint16(vt, uint16(vtLen))
	binary.LittleEndian.PutUint16(vt[2:], uint16(obj-b.tableAt))
	for _, f := range b.fields {
		binary.LittleEndian.PutUint16(vt[f.id:], uint16(obj-f.off))
	}
	final := uint32(0)
	found := false
	for _, old := range b.vtables {
		o := len(b.buf) - int(old)
		oldLen := int(binary.LittleEndian.Uint16(b.buf[o:]))
		if oldLen == vtLen && string(b.buf[o:o+oldLen]) == string(vt) {
			final, found = old, true
			break
		}
	}
	if found {
		for i := range vt {
			vt[i] = 0
		}
		b.head += vtLen
	} else {
		final = uint32(b.used())
		b.vtables = append(b.vtables, final)
	}
	tablePos := len(b.buf) - int(obj)
	binary.LittleEndian.PutUint32(b.buf[tablePos:], uint32(int32(final)-int32(obj)))
	b.fields = b.fields[:0]
	return obj
}

func (b *Builder) finish(root uint32) []byte {
	b.vtables = b.vtables[:0]
	b.align(4, b.minAlign)
	b.pushOffset(root)
	return b.Bytes()
}

func (b *Builder) headerKV(key, value string) uint32 {
	k := b.createString(key)
	v := b.createString(value)
	b.startTable()
	// The generated Rust code adds the fields in reverse schema order.
	b.slotOffset(vtValue, v)
	b.slotOffset(vtKey, k)
	return b.endTable()
}

// HeaderKV builds a HeaderKeyValue root (the payload of
// SET_RESPONSE_HEADER) and returns it: a view of the builder's memory,
// valid until the next Reset. It resets the builder first.
func (b *Builder) HeaderKV(key, value string) []byte {
	b.Reset()
	return b.finish(b.headerKV(key, value))
}

// Headers builds a NylonHttpHeaders root from key/value pairs, in order,
// and returns it as HeaderKV does. Unlike the host's encoder it sends every
// value as given (the host replaces values that are not visible ASCII with
// "").
func (b *Builder) Headers(pairs []Header) []byte {
	b.Reset()
	for _, p := range pairs {
		b.items = append(b.items, b.headerKV(string(p.Key), string(p.Value)))
	}
	n := len(b.items)
	b.align(4*n, 4)
	at := b.makeSpace(4 * n)
	u := uint32(b.used())
	for i, off := range b.items {
		binary.LittleEndian.PutUint32(b.buf[at+4*i:], u-uint32(4*i)-off)
	}
	vec := b.pushU32(uint32(n))
	b.startTable()
	b.slotOffset(vtHeaders, vec)
	return b.finish(b.endTable())
}

// EncodeHeaderKV returns a new HeaderKeyValue message.
func EncodeHeaderKV(key, value string) []byte {
	b := NewBuilder(64 + len(key) + len(value))
	return append([]byte(nil), b.HeaderKV(key, value)...)
}

// EncodeHeaders returns a new NylonHttpHeaders message.
func EncodeHeaders(pairs []Header) []byte {
	b := NewBuilder(256)
	return append([]byte(nil), b.Headers(pairs)...)
}
