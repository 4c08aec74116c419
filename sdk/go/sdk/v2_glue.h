// The C half of the Go SDK's v2 backend (see v2_glue.c and v2.go).
#ifndef NYLON_GO_V2_GLUE_H
#define NYLON_GO_V2_GLUE_H

#include <stddef.h>
#include <stdint.h>

#include "nylon_v2.h"

// Read groups: one bit per thing a handler can read. Bits 1..11 are the
// byte-string fields (NYLON_V2_FIELD_*), then the numbers and the two header
// lists. A call's snapshot has a bit set once that group was read.
#define NGO_G_NUMBERS (1u << 12)
#define NGO_G_REQ_HEADERS (1u << 13)
#define NGO_G_RESP_HEADERS (1u << 14)
#define NGO_G_ALL 0x7ffeu

// One v2 session as the Go SDK keeps it. Allocated in C, pooled, never
// freed while the library is loaded; Go reaches its own state by `slot`.
typedef struct ngo_session {
    // Set by open.
    uint32_t entry;
    uint32_t opened;   // 0: the Go side has not opened this session yet
    uint64_t host_session;
    // The Go state bound to this C object for its whole life (index + 1).
    uint32_t slot;
    // Phases with a Go handler (bit p), valid once `opened`.
    uint32_t handlers;
    // 1 held by the host until close, +1 per detached call not yet completed.
    int32_t refs;
    // The phase (1..4) or 0 for a WebSocket event: the current call.
    uint32_t phase;
    nylon_v2_call_h_ref *call;

    // The call's snapshot of host data (views of host memory).
    uint32_t have;
    nylon_v2_str_t field[12];
    uint64_t num[6];
    nylon_v2_str_t *hdr;   // request headers: name, value, name, value, ...
    size_t hdr_n, hdr_cap; // in pairs
    nylon_v2_str_t *rhdr;  // response headers, as hdr
    size_t rhdr_n, rhdr_cap;

    // Commands the Go side buffered in this call, replayed to the host when
    // the call ends (see ngo_replay for the record layout).
    uint8_t *cmd;
    size_t cmd_len, cmd_cap;

    struct ngo_session *next_free;
} ngo_session;

// Command records: a 16-byte header then `alen` + `blen` bytes, padded to 8.
typedef struct ngo_cmd {
    uint32_t op;
    uint32_t n;
    uint32_t alen;
    uint32_t blen;
} ngo_cmd;

// Called from Go (each one is a Go->C crossing; each counts itself). Hidden:
// internal to the library.
#pragma GCC visibility push(hidden)
void ngo_fetch(ngo_session *s, uint32_t mask);
int ngo_grow(ngo_session *s, size_t need);
int32_t ngo_detach(ngo_session *s);
int32_t ngo_complete(ngo_session *s, int32_t status, uint32_t flow);
void ngo_error(ngo_session *s, const char *msg, size_t len);
void ngo_set_table(nylon_v2_str_t *entries, size_t count);
const nylon_v2_plugin_t *ngo_table(void);
#pragma GCC visibility pop

#endif
