package fbs

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
)

type golden struct {
	kind  string
	pairs []Header
	want  []byte
	line  int
}

func unhex(t testing.TB, s string) []byte {
	if s == "-" {
		return []byte{}
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// loadGolden reads testdata/golden.txt, written by the Rust codec
// (src/codec/headers.rs, test go_golden_file_is_what_this_codec_encodes).
func loadGolden(t testing.TB) []golden {
	f, err := os.Open("testdata/golden.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []golden
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		w := strings.Fields(text)
		g := golden{kind: w[0], line: line}
		switch w[0] {
		case "kv":
			g.pairs = []Header{{unhex(t, w[1]), unhex(t, w[2])}}
			g.want = unhex(t, w[3])
		case "headers":
			n, err := strconv.Atoi(w[1])
			if err != nil || len(w) != 3+2*n {
				t.Fatalf("line %d: bad headers case", line)
			}
			for i := 0; i < n; i++ {
				g.pairs = append(g.pairs, Header{unhex(t, w[2+2*i]), unhex(t, w[3+2*i])})
			}
			g.want = unhex(t, w[2+2*n])
		default:
			t.Fatalf("line %d: unknown case %q", line, w[0])
		}
		out = append(out, g)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) < 10 {
		t.Fatalf("only %d golden cases", len(out))
	}
	return out
}

func TestEncodeMatchesTheRustCodecByteForByte(t *testing.T) {
	b := NewBuilder(16) // small: the growth path is taken too
	for _, g := range loadGolden(t) {
		var got []byte
		if g.kind == "kv" {
			got = b.HeaderKV(string(g.pairs[0].Key), string(g.pairs[0].Value))
			if fresh := EncodeHeaderKV(string(g.pairs[0].Key), string(g.pairs[0].Value)); !bytes.Equal(fresh, got) {
				t.Errorf("line %d: a reused builder and a fresh one differ", g.line)
			}
		} else {
			got = b.Headers(g.pairs)
		}
		if !bytes.Equal(got, g.want) {
			t.Errorf("line %d (%s): encoded\n%x\nthe Rust codec wrote\n%x", g.line, g.kind, got, g.want)
		}
	}
}

func TestDecodeReadsTheRustCodecsMessages(t *testing.T) {
	for _, g := range loadGolden(t) {
		if g.kind == "kv" {
			k, v, err := DecodeHeaderKV(g.want)
			if err != nil || !bytes.Equal(k, g.pairs[0].Key) || !bytes.Equal(v, g.pairs[0].Value) {
				t.Errorf("line %d: got %q %q %v", g.line, k, v, err)
			}
			continue
		}
		// A NylonHttpHeaders is not a HeaderKeyValue (no value field).
		if _, _, err := DecodeHeaderKV(g.want); err == nil {
			t.Errorf("line %d: a NylonHttpHeaders decoded as HeaderKeyValue", g.line)
		}
		hs, err := AppendHeaders(nil, g.want)
		if err != nil || len(hs) != len(g.pairs) {
			t.Fatalf("line %d: %d headers, %v", g.line, len(hs), err)
		}
		for i := range hs {
			if !bytes.Equal(hs[i].Key, g.pairs[i].Key) || !bytes.Equal(hs[i].Value, g.pairs[i].Value) {
				t.Errorf("line %d: header %d is %q=%q, want %q=%q", g.line, i,
					hs[i].Key, hs[i].Value, g.pairs[i].Key, g.pairs[i].Value)
			}
		}
	}
}

func TestTruncatedAndCorruptedMessagesAreErrors(t *testing.T) {
	for _, g := range loadGolden(t) {
		// A prefix that cuts into the data is an error, never a panic (the
		// message ends with the first string written: its terminator and
		// up to 3 bytes of padding can go unnoticed).
		for n := 0; n < len(g.want); n++ {
			_, _, err1 := DecodeHeaderKV(g.want[:n])
			_, err2 := AppendHeaders(nil, g.want[:n])
			decoded := err1 == nil
			if g.kind == "headers" {
				decoded = err2 == nil
			}
			if decoded && n < len(g.want)-4 {
				t.Errorf("line %d: a %d-byte prefix of %d decoded", g.line, n, len(g.want))
			}
		}
		// Every single-byte corruption decodes or fails; it never panics.
		buf := append([]byte(nil), g.want...)
		for i := range buf {
			for _, x := range []byte{0x00, 0xff, 0x80, 0x7f, buf[i] + 1} {
				old := buf[i]
				buf[i] = x
				_, _, _ = DecodeHeaderKV(buf)
				_, _ = AppendHeaders(nil, buf)
				buf[i] = old
			}
		}
	}
	for _, bad := range [][]byte{nil, {1}, {0xff, 0xff, 0xff, 0xff}, {4, 0, 0, 0, 0, 0, 0, 0}} {
		if _, _, err := DecodeHeaderKV(bad); err == nil {
			t.Errorf("%x decoded as HeaderKeyValue", bad)
		}
		if _, err := AppendHeaders(nil, bad); err == nil {
			t.Errorf("%x decoded as NylonHttpHeaders", bad)
		}
	}
}

func TestAppendHeadersLeavesDstAloneOnError(t *testing.T) {
	hs := []Header{{[]byte("a"), []byte("1")}, {[]byte("b"), []byte("2")}}
	buf := EncodeHeaders(hs)
	// Point the second element of the vector out of the buffer: the first
	// header decodes, the second does not.
	r := reader(buf)
	root, _ := r.root()
	vt, _ := r.table(root)
	vec, ok := r.offsetField(root, vt, vtHeaders)
	if !ok {
		t.Fatal("no vector")
	}
	bad := append([]byte(nil), buf...)
	bad[vec+8], bad[vec+9], bad[vec+10], bad[vec+11] = 0, 0xff, 0xff, 0x7f
	dst := []Header{{[]byte("keep"), nil}}
	got, err := AppendHeaders(dst, bad)
	if err == nil || len(got) != 1 {
		t.Fatalf("got %d headers, %v", len(got), err)
	}
}

func TestBuilderReuseDoesNotAllocate(t *testing.T) {
	b := NewBuilder(256)
	allocs := testing.AllocsPerRun(100, func() {
		_ = b.HeaderKV("x-scenario", "1")
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per HeaderKV on a reused builder", allocs)
	}
}

func FuzzDecode(f *testing.F) {
	for _, g := range loadGolden(f) {
		f.Add(g.want)
	}
	f.Fuzz(func(t *testing.T, buf []byte) {
		if k, v, err := DecodeHeaderKV(buf); err == nil {
			// What decodes re-encodes to something that decodes the same.
			k2, v2, err := DecodeHeaderKV(EncodeHeaderKV(string(k), string(v)))
			if err != nil || !bytes.Equal(k, k2) || !bytes.Equal(v, v2) {
				t.Fatalf("round trip: %q %q -> %q %q %v", k, v, k2, v2, err)
			}
		}
		if hs, err := AppendHeaders(nil, buf); err == nil {
			hs2, err := AppendHeaders(nil, EncodeHeaders(hs))
			if err != nil || len(hs2) != len(hs) {
				t.Fatalf("round trip: %d -> %d headers, %v", len(hs), len(hs2), err)
			}
		}
	})
}
