/*
 * A legacy Nylon plugin in C, written against include/nylon_legacy.h only.
 *
 *   cc -shared -fPIC -O2 -pthread -o libc_plugin.so examples/c_plugin/plugin.c -Iinclude
 *
 * It is event-driven: nothing ever blocks waiting for the host. A phase
 * starts with event_stream({phase N, method 0}); the plugin answers through
 * the session's callback; replies to reads come back as event_stream({phase
 * 0, method = the read's id}), possibly re-entrantly inside the callback call
 * that sent the read, possibly later from another thread. So every handler
 * updates the session's state under the table lock, releases the lock, and
 * only then calls the callback.
 *
 * Entries:
 *   c_basic      phase 1: read the path, then the x-user header, then set
 *                x-c-path / x-c-user, status 202, body "from C", and END.
 *   c_next       every phase: NEXT.
 *   c_silent     phase 1: nothing, ever (the host times out).
 *   c_unknown    phase 1: method 4242 (an unknown id), then nothing.
 *   c_malformed  phase 1: SET_RESPONSE_HEADER with 7 bytes that are not a
 *                FlatBuffer, then nothing.
 *   c_threads    phase 1: 4 threads each send 100 SET_RESPONSE_HEADERs
 *                ("x-t<t>", "<i>"), then NEXT once all are joined.
 *   c_ws_echo    phase 1: WEBSOCKET_UPGRADE; every text / binary message is
 *                sent back as it came.
 *   c_ws_room    phase 1: READ_REQUEST_QUERY, then WEBSOCKET_UPGRADE. Room
 *                chat: joins the room of the query's `room=` on open (or,
 *                without one, the room the first message names), then
 *                broadcasts every later message to it (sender included).
 * Phases 2..4 send NEXT for every entry except c_silent.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nylon_legacy.h"

#define MAX_SESSIONS 1024
#define THREADS 4
#define HEADERS_PER_THREAD 100

enum entry {
    ENTRY_NONE = 0,
    ENTRY_BASIC,
    ENTRY_NEXT,
    ENTRY_SILENT,
    ENTRY_UNKNOWN,
    ENTRY_MALFORMED,
    ENTRY_THREADS,
    ENTRY_WS_ECHO,
    ENTRY_WS_ROOM,
};

#define MAX_ROOM 128

/* Where c_basic's phase 1 is. */
enum basic_stage {
    BASIC_IDLE = 0,
    BASIC_WAIT_PATH, /* READ_REQUEST_PATH sent */
    BASIC_WAIT_USER, /* READ_REQUEST_HEADER sent, path stored */
    BASIC_DONE,
};

struct session {
    int used;
    uint32_t sid;
    enum entry entry;
    data_event_fn cb;
    enum basic_stage stage;
    unsigned char *path; /* c_basic: the path reply, owned (malloc) */
    size_t path_len;
    char room[MAX_ROOM]; /* c_ws_room: the room, once known */
    size_t room_len;
};

/* The session table and the config copy. `lock` is never held across a cb call. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct session sessions[MAX_SESSIONS];
static unsigned char *config;
static size_t config_len;

static const struct {
    const char *name;
    enum entry entry;
} entries[] = {
    {"c_basic", ENTRY_BASIC},         {"c_next", ENTRY_NEXT},
    {"c_silent", ENTRY_SILENT},       {"c_unknown", ENTRY_UNKNOWN},
    {"c_malformed", ENTRY_MALFORMED}, {"c_threads", ENTRY_THREADS},
    {"c_ws_echo", ENTRY_WS_ECHO},     {"c_ws_room", ENTRY_WS_ROOM},
};

/* ------------------------------------------------------------------------ */
/* Helpers (all static: the library exports only the six ABI symbols)       */
/* ------------------------------------------------------------------------ */

/* Sends one message; an empty payload goes out as NULL/0. Call without `lock`. */
static void send_msg(data_event_fn cb, uint32_t sid, uint32_t method, const void *data, size_t len)
{
    FfiBuffer buf;
    memset(&buf, 0, sizeof buf);
    buf.sid = sid;
    buf.phase = NYLON_PHASE_ZERO;
    buf.method = method;
    buf.ptr = len ? (const unsigned char *)data : NULL;
    buf.len = (uint64_t)len;
    cb(&buf);
}

/* Sends SET_RESPONSE_HEADER (key, val). A small stack buffer covers the usual case. */
static void send_header(data_event_fn cb, uint32_t sid, const char *key, size_t klen,
                        const char *val, size_t vlen)
{
    uint8_t small[256];
    uint8_t *out = small;
    size_t n = nylon_header_kv_encode(small, sizeof small, key, klen, val, vlen);
    if (n == 0) {
        /* 32 + pad4(klen + 1) + pad4(vlen + 1) <= klen + vlen + 40 */
        size_t cap;
        if (vlen > SIZE_MAX - 40 || klen > SIZE_MAX - 40 - vlen)
            return;
        cap = klen + vlen + 40;
        if ((out = malloc(cap)) == NULL)
            return;
        n = nylon_header_kv_encode(out, cap, key, klen, val, vlen);
    }
    if (n != 0)
        send_msg(cb, sid, NYLON_METHOD_SET_RESPONSE_HEADER, out, n);
    if (out != small)
        free(out);
}

/* The slot holding sid, or NULL. Call with `lock` held. */
static struct session *find(uint32_t sid)
{
    size_t start = sid % MAX_SESSIONS, i;
    for (i = 0; i < MAX_SESSIONS; i++) {
        struct session *s = &sessions[(start + i) % MAX_SESSIONS];
        if (s->used && s->sid == sid)
            return s;
    }
    return NULL;
}

/* A free slot for sid (its own slot if it is already open), or NULL. Call with `lock` held. */
static struct session *claim(uint32_t sid)
{
    size_t start = sid % MAX_SESSIONS, i;
    struct session *s = find(sid);
    if (s != NULL)
        return s;
    for (i = 0; i < MAX_SESSIONS; i++) {
        s = &sessions[(start + i) % MAX_SESSIONS];
        if (!s->used)
            return s;
    }
    return NULL;
}

/* Empties a slot. Call with `lock` held. */
static void release(struct session *s)
{
    free(s->path);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------ */
/* c_threads                                                                */
/* ------------------------------------------------------------------------ */

struct worker {
    pthread_t thread;
    int started;
    int t;
    uint32_t sid;
    data_event_fn cb;
};

static void *worker_main(void *arg)
{
    const struct worker *w = arg;
    char key[16], val[16];
    int klen = snprintf(key, sizeof key, "x-t%d", w->t);
    int i;
    for (i = 0; i < HEADERS_PER_THREAD; i++) {
        int vlen = snprintf(val, sizeof val, "%d", i);
        send_header(w->cb, w->sid, key, (size_t)klen, val, (size_t)vlen);
    }
    return NULL;
}

/*
 * Runs the 4 workers, joins them, then sends NEXT. The join happens inside
 * this event_stream call, so no plugin thread outlives it (the library may
 * be unloaded once the host has its NEXT). The workers only call the
 * callback, which never waits for the host, so the join is bounded.
 */
static void run_threads(uint32_t sid, data_event_fn cb)
{
    struct worker w[THREADS];
    int t;
    for (t = 0; t < THREADS; t++) {
        w[t].t = t;
        w[t].sid = sid;
        w[t].cb = cb;
        w[t].started = pthread_create(&w[t].thread, NULL, worker_main, &w[t]) == 0;
        if (!w[t].started)
            worker_main(&w[t]); /* no thread available: do its share here */
    }
    for (t = 0; t < THREADS; t++)
        if (w[t].started)
            pthread_join(w[t].thread, NULL);
    send_msg(cb, sid, NYLON_METHOD_NEXT, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Message handling                                                         */
/* ------------------------------------------------------------------------ */

static void phase_start(uint32_t sid, uint8_t phase)
{
    static const char garbage[] = "\x01\x02" "garbage";
    enum entry entry;
    data_event_fn cb;

    pthread_mutex_lock(&lock);
    struct session *s = find(sid);
    if (s == NULL) {
        pthread_mutex_unlock(&lock);
        return;
    }
    entry = s->entry;
    cb = s->cb;
    if (entry == ENTRY_BASIC && phase == NYLON_PHASE_REQUEST_FILTER) {
        /* State first: the reply may arrive inside the cb call below. */
        free(s->path);
        s->path = NULL;
        s->path_len = 0;
        s->stage = BASIC_WAIT_PATH;
    }
    pthread_mutex_unlock(&lock);

    if (phase != NYLON_PHASE_REQUEST_FILTER) {
        if (entry != ENTRY_SILENT)
            send_msg(cb, sid, NYLON_METHOD_NEXT, NULL, 0);
        return;
    }
    switch (entry) {
    case ENTRY_BASIC:
        send_msg(cb, sid, NYLON_METHOD_READ_REQUEST_PATH, NULL, 0);
        break;
    case ENTRY_NEXT:
        send_msg(cb, sid, NYLON_METHOD_NEXT, NULL, 0);
        break;
    case ENTRY_SILENT:
        break;
    case ENTRY_UNKNOWN:
        send_msg(cb, sid, 4242u, NULL, 0);
        break;
    case ENTRY_MALFORMED:
        send_msg(cb, sid, NYLON_METHOD_SET_RESPONSE_HEADER, garbage, 7);
        break;
    case ENTRY_THREADS:
        run_threads(sid, cb);
        break;
    case ENTRY_WS_ECHO:
        send_msg(cb, sid, NYLON_METHOD_WEBSOCKET_UPGRADE, NULL, 0);
        break;
    case ENTRY_WS_ROOM:
        send_msg(cb, sid, NYLON_METHOD_READ_REQUEST_QUERY, NULL, 0);
        break;
    case ENTRY_NONE:
        break;
    }
}

/* c_basic, after the x-user reply: headers, status, body, END. */
static void basic_finish(uint32_t sid, data_event_fn cb, const unsigned char *path,
                         size_t path_len, const unsigned char *user, size_t user_len)
{
    static const char body[] = "from C";
    const uint8_t status[2] = {202 >> 8, 202 & 0xff};
    send_header(cb, sid, "x-c-path", 8, (const char *)path, path_len);
    send_header(cb, sid, "x-c-user", 8, (const char *)user, user_len);
    send_msg(cb, sid, NYLON_METHOD_SET_RESPONSE_STATUS, status, sizeof status);
    send_msg(cb, sid, NYLON_METHOD_SET_RESPONSE_FULL_BODY, body, sizeof body - 1);
    send_msg(cb, sid, NYLON_METHOD_END, NULL, 0);
}

/* Sends `room` NUL `data` as a broadcast (312 text, 313 binary). */
static void broadcast(data_event_fn cb, uint32_t sid, uint32_t method, const char *room,
                      size_t room_len, const unsigned char *data, size_t len)
{
    unsigned char *p;
    if (len > SIZE_MAX - room_len - 1 || (p = malloc(room_len + 1 + len)) == NULL)
        return;
    memcpy(p, room, room_len);
    p[room_len] = 0;
    if (len)
        memcpy(p + room_len + 1, data, len);
    send_msg(cb, sid, method, p, room_len + 1 + len);
    free(p);
}

/* c_ws_echo and c_ws_room: the query's reply and the WebSocket events. */
static void ws_reply(const FfiBuffer *buf, const unsigned char *data, size_t len)
{
    char room[MAX_ROOM];
    size_t room_len = 0;
    enum entry entry;
    data_event_fn cb;
    int join = 0;

    pthread_mutex_lock(&lock);
    struct session *s = find(buf->sid);
    if (s == NULL || (s->entry != ENTRY_WS_ECHO && s->entry != ENTRY_WS_ROOM)) {
        pthread_mutex_unlock(&lock);
        return;
    }
    entry = s->entry;
    cb = s->cb;
    if (entry == ENTRY_WS_ROOM && buf->method == NYLON_METHOD_READ_REQUEST_QUERY) {
        /* room=NAME among &-separated pairs */
        size_t i = 0;
        while (i < len) {
            size_t end = i;
            while (end < len && data[end] != '&')
                end++;
            if (end - i > 5 && memcmp(data + i, "room=", 5) == 0 && end - i - 5 <= MAX_ROOM) {
                memcpy(s->room, data + i + 5, end - i - 5);
                s->room_len = end - i - 5;
                break;
            }
            i = end + 1;
        }
    } else if (entry == ENTRY_WS_ROOM && s->room_len == 0 &&
               buf->method == NYLON_METHOD_WEBSOCKET_ON_MESSAGE_TEXT && len > 0 &&
               len <= MAX_ROOM) {
        /* The first message names the room. */
        memcpy(s->room, data, len);
        s->room_len = len;
        join = 1;
    } else if (entry == ENTRY_WS_ROOM && buf->method == NYLON_METHOD_WEBSOCKET_ON_OPEN) {
        join = s->room_len != 0;
    }
    room_len = s->room_len;
    memcpy(room, s->room, room_len);
    pthread_mutex_unlock(&lock);

    switch (buf->method) {
    case NYLON_METHOD_READ_REQUEST_QUERY:
        send_msg(cb, buf->sid, NYLON_METHOD_WEBSOCKET_UPGRADE, NULL, 0);
        break;
    case NYLON_METHOD_WEBSOCKET_ON_OPEN:
        if (join)
            send_msg(cb, buf->sid, NYLON_METHOD_WEBSOCKET_JOIN_ROOM, room, room_len);
        break;
    case NYLON_METHOD_WEBSOCKET_ON_MESSAGE_TEXT:
    case NYLON_METHOD_WEBSOCKET_ON_MESSAGE_BINARY:
        if (entry == ENTRY_WS_ECHO) {
            uint32_t m = buf->method == NYLON_METHOD_WEBSOCKET_ON_MESSAGE_TEXT
                             ? NYLON_METHOD_WEBSOCKET_SEND_TEXT
                             : NYLON_METHOD_WEBSOCKET_SEND_BINARY;
            send_msg(cb, buf->sid, m, data, len);
        } else if (join) {
            send_msg(cb, buf->sid, NYLON_METHOD_WEBSOCKET_JOIN_ROOM, room, room_len);
        } else if (room_len != 0) {
            uint32_t m = buf->method == NYLON_METHOD_WEBSOCKET_ON_MESSAGE_TEXT
                             ? NYLON_METHOD_WEBSOCKET_BROADCAST_ROOM_TEXT
                             : NYLON_METHOD_WEBSOCKET_BROADCAST_ROOM_BINARY;
            broadcast(cb, buf->sid, m, room, room_len, data, len);
        }
        break;
    default: /* 353 close, 354 error: the host ends the phase */
        break;
    }
}

static void reply(const FfiBuffer *buf)
{
    /* buf->ptr is valid only until event_stream returns; test len, not ptr. */
    const unsigned char *data = buf->len ? buf->ptr : NULL;
    size_t len = (size_t)buf->len;
    static const char user_header[] = "x-user";
    unsigned char *path = NULL;
    size_t path_len = 0;
    data_event_fn cb;
    enum { NOTHING, READ_USER, FINISH } next = NOTHING;

#if SIZE_MAX < UINT64_MAX
    if (buf->len > SIZE_MAX)
        return;
#endif
    if (buf->len != 0 && buf->ptr == NULL)
        return;

    pthread_mutex_lock(&lock);
    struct session *s = find(buf->sid);
    if (s != NULL && (s->entry == ENTRY_WS_ECHO || s->entry == ENTRY_WS_ROOM)) {
        pthread_mutex_unlock(&lock);
        ws_reply(buf, data, len);
        return;
    }
    if (s == NULL || s->entry != ENTRY_BASIC) {
        pthread_mutex_unlock(&lock);
        return;
    }
    cb = s->cb;
    if (buf->method == NYLON_METHOD_READ_REQUEST_PATH && s->stage == BASIC_WAIT_PATH) {
        unsigned char *copy = malloc(len ? len : 1);
        if (copy != NULL) {
            if (len)
                memcpy(copy, data, len);
            s->path = copy;
            s->path_len = len;
            s->stage = BASIC_WAIT_USER; /* before the cb call: its reply may come inside it */
            next = READ_USER;
        }
    } else if (buf->method == NYLON_METHOD_READ_REQUEST_HEADER && s->stage == BASIC_WAIT_USER) {
        /* Take the path out of the slot so a concurrent close cannot free it. */
        path = s->path;
        path_len = s->path_len;
        s->path = NULL;
        s->path_len = 0;
        s->stage = BASIC_DONE;
        next = FINISH;
    }
    pthread_mutex_unlock(&lock);

    if (next == READ_USER) {
        send_msg(cb, buf->sid, NYLON_METHOD_READ_REQUEST_HEADER, user_header,
                 sizeof user_header - 1);
    } else if (next == FINISH) {
        basic_finish(buf->sid, cb, path, path_len, data, len);
        free(path);
    }
}

/* ------------------------------------------------------------------------ */
/* The six exported symbols                                                 */
/* ------------------------------------------------------------------------ */

void initialize(const uint8_t *cfg, uint32_t cfg_len)
{
    unsigned char *copy = NULL;
    if (cfg_len != 0 && cfg != NULL) {
        copy = malloc(cfg_len);
        if (copy != NULL)
            memcpy(copy, cfg, cfg_len);
    }
    pthread_mutex_lock(&lock);
    free(config);
    config = copy;
    config_len = copy != NULL ? cfg_len : 0;
    pthread_mutex_unlock(&lock);
}

void plugin_free(uint8_t *p)
{
    (void)p; /* never called: this plugin hands no memory to the host */
}

uint8_t register_session_stream(uint32_t sid, const uint8_t *entry, uint32_t entry_len,
                                data_event_fn cb)
{
    enum entry e = ENTRY_NONE;
    size_t i;
    if (cb == NULL || (entry_len != 0 && entry == NULL))
        return 0;
    for (i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        size_t n = strlen(entries[i].name);
        if (n == entry_len && memcmp(entries[i].name, entry, n) == 0) {
            e = entries[i].entry;
            break;
        }
    }
    if (e == ENTRY_NONE)
        return 0;

    pthread_mutex_lock(&lock);
    struct session *s = claim(sid);
    if (s != NULL) {
        release(s);
        s->used = 1;
        s->sid = sid;
        s->entry = e;
        s->cb = cb;
    }
    pthread_mutex_unlock(&lock);
    return s != NULL ? 1 : 0;
}

void event_stream(const FfiBuffer *buf)
{
    if (buf == NULL)
        return;
    /* Like the Go SDK, key on the phase byte alone: 1..4 start a phase. */
    if (buf->phase == NYLON_PHASE_ZERO)
        reply(buf);
    else if (buf->phase <= NYLON_PHASE_LOGGING)
        phase_start(buf->sid, buf->phase);
}

void close_session_stream(uint32_t sid)
{
    pthread_mutex_lock(&lock);
    struct session *s = find(sid);
    if (s != NULL)
        release(s);
    pthread_mutex_unlock(&lock);
}

void shutdown(void)
{
    size_t i;
    pthread_mutex_lock(&lock);
    for (i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].used)
            release(&sessions[i]);
    free(config);
    config = NULL;
    config_len = 0;
    pthread_mutex_unlock(&lock);
}
