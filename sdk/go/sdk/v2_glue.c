//go:build !nylon_legacy

// The C half of the Go SDK's v2 backend: the plugin table and the functions
// the host calls. They run on the host's thread and enter Go only when a Go
// handler has to run:
//
//   open, close     never enter Go (sessions are pooled C objects; the Go side
//                   opens a session lazily, in its first phase);
//   phase           enters Go once, unless the session has no Go handler for
//                   that phase (then it answers NEXT itself);
//   ws_event        enters Go once.
//
// Before entering Go, phase and ws_event read from the host what this entry's
// handler read in that phase before (a mask learnt per entry and phase), so a
// handler's reads are answered from the snapshot without a Go->C crossing.
// After Go returns OK, the commands Go buffered in the session are replayed to
// the host in order. Every C->Go call and every C function Go calls counts
// itself, for the tests (ngo_counters).

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "v2_glue.h"
#include "_cgo_export.h"

static const nylon_v2_host_t *ngo_host;

static uint64_t ngo_go_to_c;
static uint64_t ngo_c_to_go;
#define COUNT_GO_TO_C() __atomic_fetch_add(&ngo_go_to_c, 1, __ATOMIC_RELAXED)
#define COUNT_C_TO_GO() __atomic_fetch_add(&ngo_c_to_go, 1, __ATOMIC_RELAXED)

// Detached calls not yet completed, over every session (shutdown waits).
static int64_t ngo_outstanding;

// The session pool.
static pthread_mutex_t ngo_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static ngo_session *ngo_free;

// What each entry's handler read, per phase (0 = WebSocket events).
static uint32_t *ngo_learnt;
static size_t ngo_entry_count;

static char ngo_instance; // the instance pointer: one per library

static uint32_t *learnt(const ngo_session *s) {
    static uint32_t none;
    if (ngo_learnt == NULL || s->entry >= ngo_entry_count || s->phase > 4) {
        return &none;
    }
    return &ngo_learnt[s->entry * 5 + s->phase];
}

// ---- Reading from the host into the snapshot ----

static int grow_pairs(nylon_v2_str_t **v, size_t *cap) {
    size_t n = *cap ? *cap * 2 : 16;
    nylon_v2_str_t *p = realloc(*v, n * 2 * sizeof(nylon_v2_str_t));
    if (p == NULL) {
        return 0;
    }
    *v = p;
    *cap = n;
    return 1;
}

static void fetch_headers(ngo_session *s, int response) {
    nylon_v2_str_t **v = response ? &s->rhdr : &s->hdr;
    size_t *n = response ? &s->rhdr_n : &s->hdr_n;
    size_t *cap = response ? &s->rhdr_cap : &s->hdr_cap;
    int32_t (*at)(nylon_v2_call_h_ref *, size_t, nylon_v2_str_t *, nylon_v2_str_t *) =
        response ? ngo_host->response_header_at : ngo_host->header_at;
    *n = 0;
    for (;;) {
        if (*n == *cap && !grow_pairs(v, cap)) {
            return;
        }
        nylon_v2_str_t *pair = *v + 2 * *n;
        if (at(s->call, *n, &pair[0], &pair[1]) != NYLON_V2_OK) {
            return;
        }
        *n += 1;
    }
}

// Reads the groups of `mask` the snapshot lacks.
static void fetch(ngo_session *s, uint32_t mask) {
    uint32_t todo = mask & ~s->have & NGO_G_ALL;
    if (todo == 0) {
        return;
    }
    for (uint32_t f = NYLON_V2_FIELD_METHOD; f <= NYLON_V2_FIELD_ERROR; f++) {
        if (todo & (1u << f)) {
            if (ngo_host->read(s->call, f, &s->field[f]) != NYLON_V2_OK) {
                s->field[f].ptr = NULL;
                s->field[f].len = 0;
            }
        }
    }
    if (todo & NGO_G_NUMBERS) {
        for (uint32_t w = NYLON_V2_NUMBER_RESPONSE_STATUS; w <= NYLON_V2_NUMBER_RESPONSE_BYTES; w++) {
            if (ngo_host->number(s->call, w, &s->num[w]) != NYLON_V2_OK) {
                s->num[w] = 0;
            }
        }
    }
    if (todo & NGO_G_REQ_HEADERS) {
        fetch_headers(s, 0);
    }
    if (todo & NGO_G_RESP_HEADERS) {
        fetch_headers(s, 1);
    }
    s->have |= todo;
}

void ngo_fetch(ngo_session *s, uint32_t mask) {
    COUNT_GO_TO_C();
    // Learn it: the next call of this entry and phase reads it before
    // entering Go. Not the request body: a host may have to read it from
    // the client first, which only a handler that wants it should cause.
    __atomic_fetch_or(learnt(s), mask & NGO_G_ALL & ~(1u << NYLON_V2_FIELD_REQUEST_BODY),
                      __ATOMIC_RELAXED);
    fetch(s, mask);
}

// ---- Commands ----

int ngo_grow(ngo_session *s, size_t need) {
    COUNT_GO_TO_C();
    size_t want = s->cmd_len + need;
    if (want <= s->cmd_cap) {
        return 1;
    }
    size_t cap = s->cmd_cap ? s->cmd_cap : 256;
    while (cap < want) {
        cap *= 2;
    }
    uint8_t *p = realloc(s->cmd, cap);
    if (p == NULL) {
        return 0;
    }
    s->cmd = p;
    s->cmd_cap = cap;
    return 1;
}

// Replays the buffered commands to the host, in order, and empties the
// buffer. A FULL from the host is not an error here: the host remembers the
// overflow and fails the call when it ends.
static void replay(ngo_session *s) {
    size_t at = 0;
    while (at + sizeof(ngo_cmd) <= s->cmd_len) {
        ngo_cmd c;
        memcpy(&c, s->cmd + at, sizeof c);
        nylon_v2_str_t a = {s->cmd + at + sizeof c, c.alen};
        nylon_v2_str_t b = {a.ptr + c.alen, c.blen};
        nylon_v2_call_h_ref *call = s->call;
        switch (c.op) {
        case 1: ngo_host->set_header(call, a, b); break;
        case 2: ngo_host->remove_header(call, a); break;
        case 3: ngo_host->set_status(call, (uint16_t)c.n); break;
        case 4: ngo_host->set_body(call, a); break;
        case 5: ngo_host->stream_header(call); break;
        case 6: ngo_host->stream_write(call, a); break;
        case 7: ngo_host->ws_upgrade(call); break;
        case 8: ngo_host->ws_send(call, c.n, a); break;
        case 9: ngo_host->ws_close(call); break;
        case 10: ngo_host->ws_room(call, a, c.n); break;
        case 11: ngo_host->ws_broadcast(call, a, c.n, b); break;
        default: break;
        }
        at += (sizeof c + c.alen + c.blen + 7) & ~(size_t)7;
    }
    s->cmd_len = 0;
}

// ---- Pool ----

static ngo_session *take(void) {
    pthread_mutex_lock(&ngo_pool_lock);
    ngo_session *s = ngo_free;
    if (s != NULL) {
        ngo_free = s->next_free;
    }
    pthread_mutex_unlock(&ngo_pool_lock);
    if (s == NULL) {
        s = calloc(1, sizeof *s);
    }
    return s;
}

static void unref(ngo_session *s) {
    if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    s->call = NULL;
    s->cmd_len = 0;
    pthread_mutex_lock(&ngo_pool_lock);
    s->next_free = ngo_free;
    ngo_free = s;
    pthread_mutex_unlock(&ngo_pool_lock);
}

// ---- Detach and complete (from Go) ----

int32_t ngo_detach(ngo_session *s) {
    COUNT_GO_TO_C();
    __atomic_fetch_add(&s->refs, 1, __ATOMIC_ACQ_REL);
    __atomic_fetch_add(&ngo_outstanding, 1, __ATOMIC_ACQ_REL);
    return ngo_host->detach(s->call);
}

int32_t ngo_complete(ngo_session *s, int32_t status, uint32_t flow) {
    COUNT_GO_TO_C();
    if (status == NYLON_V2_OK) {
        replay(s);
    } else {
        s->cmd_len = 0;
    }
    int32_t st = ngo_host->complete(s->call, status, flow);
    __atomic_fetch_sub(&ngo_outstanding, 1, __ATOMIC_ACQ_REL);
    unref(s);
    return st;
}

void ngo_error(ngo_session *s, const char *msg, size_t len) {
    COUNT_GO_TO_C();
    nylon_v2_str_t m = {(const uint8_t *)msg, len};
    ngo_host->error(s->call, m);
}

// ---- The plugin's functions ----

static int32_t t_init(const nylon_v2_host_t *host, nylon_v2_str_t config, void **out) {
    if (host == NULL || out == NULL || host->abi_version != NYLON_V2_ABI_VERSION ||
        host->size < sizeof(nylon_v2_host_t)) {
        return NYLON_V2_VERSION;
    }
    __atomic_store_n(&ngo_host, host, __ATOMIC_RELEASE);
    COUNT_C_TO_GO();
    int32_t st = ngoGoInit((uint8_t *)config.ptr, config.len);
    if (st == NYLON_V2_OK) {
        *out = &ngo_instance;
    }
    return st;
}

static int32_t t_open(void *instance, uint32_t entry, uint64_t session, void **out) {
    (void)instance;
    if (out == NULL || entry >= ngo_entry_count) {
        return NYLON_V2_NOT_FOUND;
    }
    ngo_session *s = take();
    if (s == NULL) {
        return NYLON_V2_ERROR;
    }
    s->entry = entry;
    s->opened = 0;
    s->handlers = 0;
    s->host_session = session;
    s->refs = 1;
    s->cmd_len = 0;
    *out = s;
    return NYLON_V2_OK;
}

static int32_t t_phase(void *state, uint32_t phase, nylon_v2_call_h_ref *call, uint32_t *out_flow) {
    ngo_session *s = state;
    if (s->opened && phase <= 4 && !(s->handlers & (1u << phase))) {
        // No Go handler for this phase: the default handler's NEXT.
        *out_flow = NYLON_V2_FLOW_NEXT;
        return NYLON_V2_OK;
    }
    s->phase = phase <= 4 ? phase : 0;
    s->call = call;
    s->have = 0;
    s->cmd_len = 0;
    fetch(s, __atomic_load_n(learnt(s), __ATOMIC_RELAXED));
    uint32_t flow = 0;
    COUNT_C_TO_GO();
    int32_t st = ngoGoPhase(s, phase, &flow);
    if (st == NYLON_V2_OK) {
        replay(s);
        *out_flow = flow;
    } else if (st != NYLON_V2_PENDING) {
        s->cmd_len = 0;
    }
    return st;
}

static int32_t t_ws_event(void *state, uint32_t kind, nylon_v2_str_t data, nylon_v2_call_h_ref *call) {
    ngo_session *s = state;
    s->phase = 0;
    s->call = call;
    s->have = 0;
    s->cmd_len = 0;
    fetch(s, __atomic_load_n(learnt(s), __ATOMIC_RELAXED));
    COUNT_C_TO_GO();
    int32_t st = ngoGoWsEvent(s, kind, (uint8_t *)data.ptr, data.len);
    if (st == NYLON_V2_OK) {
        replay(s);
    } else {
        s->cmd_len = 0;
    }
    return st;
}

static void t_close(void *state) {
    ngo_session *s = state;
    unref(s);
}

static void t_shutdown(void *instance) {
    (void)instance;
    // No call handle may be used after shutdown returns: wait (up to 10 s)
    // for the detached calls Go has not completed yet.
    for (int i = 0; i < 10000 && __atomic_load_n(&ngo_outstanding, __ATOMIC_ACQUIRE) > 0; i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    COUNT_C_TO_GO();
    ngoGoShutdown();
}

// ---- The table ----

static nylon_v2_plugin_t ngo_plugin = {
    .abi_version = NYLON_V2_ABI_VERSION,
    .size = sizeof(nylon_v2_plugin_t),
    .host_size = sizeof(nylon_v2_host_t),
    .reserved = 0,
    .name = {(const uint8_t *)"go", 2},
    .entries = NULL,
    .entry_count = 0,
    .init = t_init,
    .open = t_open,
    .phase = t_phase,
    .ws_event = t_ws_event,
    .close = t_close,
    .shutdown = t_shutdown,
};

void ngo_set_table(nylon_v2_str_t *entries, size_t count) {
    COUNT_GO_TO_C();
    ngo_learnt = calloc(count * 5 + 1, sizeof(uint32_t));
    ngo_plugin.entries = entries;
    ngo_plugin.entry_count = count;
    ngo_entry_count = count;
}

const nylon_v2_plugin_t *ngo_table(void) {
    COUNT_GO_TO_C();
    return &ngo_plugin;
}


// ---- Exported symbols ----

// The one symbol a v2 host looks for. The first call builds the entry list
// from the entries the plugin's init functions registered (one C->Go call).
NYLON_V2_EXPORT const nylon_v2_plugin_t *nylon_v2_plugin(void) {
    static const nylon_v2_plugin_t *table;
    const nylon_v2_plugin_t *t = __atomic_load_n(&table, __ATOMIC_ACQUIRE);
    if (t == NULL) {
        COUNT_C_TO_GO();
        t = ngoGoTable();
        __atomic_store_n(&table, t, __ATOMIC_RELEASE);
    }
    return t;
}

// Test hook: the crossings counted so far (Go->C calls of this file's
// functions, C->Go calls into Go). Reading them does not cross.
NYLON_V2_EXPORT void nylon_go_crossings(uint64_t *go_to_c, uint64_t *c_to_go) {
    *go_to_c = __atomic_load_n(&ngo_go_to_c, __ATOMIC_RELAXED);
    *c_to_go = __atomic_load_n(&ngo_c_to_go, __ATOMIC_RELAXED);
}
