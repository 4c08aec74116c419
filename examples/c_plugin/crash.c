/*
 * A legacy Nylon plugin that crashes on purpose, for the process-isolation
 * tests only (tests/isolated.rs). Never load it in process: it takes the
 * process down.
 *
 *   cc -shared -fPIC -O2 -o libcrash.so examples/c_plugin/crash.c -Iinclude
 *
 * Entries (phase 1; phases 2..4 send NEXT):
 *   ok           sets x-worker-pid to getpid() and x-config to the config
 *                passed to initialize, then END.
 *   crash_segv   writes through a NULL pointer (SIGSEGV).
 *   crash_abort  calls abort() (SIGABRT).
 *   crash_exit   calls exit(7), like a runtime that gives up.
 *   crash_fatal  prints a Go-style "fatal error:" line and exits with 2, as
 *                the Go runtime does on a fatal error.
 *   crash_loop   loops forever without answering.
 *   sleep_2s     blocks the calling thread for 2 s, then NEXT (a worker
 *                that is behind: nobody drains its ring meanwhile).
 *   pair         does not answer until a second `pair` session's phase 1
 *                comes; that one answers both (NEXT, each with x-paired-with
 *                set to the other's sid). A worker that ran one phase at a
 *                time would never deliver the second.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nylon_legacy.h"

#define MAX_SESSIONS 4096

enum entry { NONE = 0, OK, SEGV, ABRT, EXIT, FATAL, LOOP, PAIR, SLEEP };

static const struct {
    const char *name;
    enum entry entry;
} entries[] = {
    {"ok", OK},          {"crash_segv", SEGV}, {"crash_abort", ABRT},
    {"crash_exit", EXIT}, {"crash_fatal", FATAL}, {"crash_loop", LOOP},
    {"pair", PAIR},       {"sleep_2s", SLEEP},
};

/* Sessions by sid modulo the table size (the worker calls in from its main
   thread only). */
static struct {
    uint32_t sid;
    enum entry entry;
    data_event_fn cb;
} sessions[MAX_SESSIONS];

/* The `pair` session waiting for its partner (sid 0: none). */
static pthread_mutex_t pair_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t pair_sid;
static data_event_fn pair_cb;

static char config[257];
static size_t config_len;

void initialize(const uint8_t *cfg, uint32_t cfg_len)
{
    config_len = cfg_len < sizeof config - 1 ? cfg_len : sizeof config - 1;
    if (config_len != 0)
        memcpy(config, cfg, config_len);
}

void plugin_free(uint8_t *p)
{
    (void)p;
}

uint8_t register_session_stream(uint32_t sid, const uint8_t *entry, uint32_t entry_len,
                                data_event_fn cb)
{
    size_t i;
    for (i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        size_t n = strlen(entries[i].name);
        if (n == entry_len && memcmp(entries[i].name, entry, n) == 0) {
            uint32_t k = sid % MAX_SESSIONS;
            sessions[k].sid = sid;
            sessions[k].entry = entries[i].entry;
            sessions[k].cb = cb;
            return 1;
        }
    }
    return 0;
}

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

static void send_header(data_event_fn cb, uint32_t sid, const char *key, const char *val,
                        size_t vlen)
{
    uint8_t out[512];
    size_t n = nylon_header_kv_encode(out, sizeof out, key, strlen(key), val, vlen);
    if (n != 0)
        send_msg(cb, sid, NYLON_METHOD_SET_RESPONSE_HEADER, out, n);
}

void event_stream(const FfiBuffer *buf)
{
    if (buf == NULL || buf->phase == NYLON_PHASE_ZERO || buf->phase > NYLON_PHASE_LOGGING)
        return;
    uint32_t k = buf->sid % MAX_SESSIONS;
    if (sessions[k].sid != buf->sid || sessions[k].cb == NULL)
        return;
    data_event_fn cb = sessions[k].cb;
    if (buf->phase != NYLON_PHASE_REQUEST_FILTER) {
        send_msg(cb, buf->sid, NYLON_METHOD_NEXT, NULL, 0);
        return;
    }
    switch (sessions[k].entry) {
    case OK: {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
        send_header(cb, buf->sid, "x-worker-pid", pid, (size_t)n);
        send_header(cb, buf->sid, "x-config", config, config_len);
        send_msg(cb, buf->sid, NYLON_METHOD_END, NULL, 0);
        return;
    }
    case SEGV: {
        volatile int *p = NULL;
        *p = 42;
        return;
    }
    case ABRT:
        abort();
    case EXIT:
        exit(7);
    case FATAL:
        fprintf(stderr, "fatal error: all goroutines are asleep - deadlock!\n");
        exit(2);
    case LOOP:
        for (;;) {
            /* A volatile read keeps the loop from being optimised out. */
            volatile int spin = 0;
            (void)spin;
        }
    case PAIR: {
        pthread_mutex_lock(&pair_lock);
        uint32_t other = pair_sid;
        data_event_fn other_cb = pair_cb;
        if (other == 0) {
            pair_sid = buf->sid;
            pair_cb = cb;
        } else {
            pair_sid = 0;
        }
        pthread_mutex_unlock(&pair_lock);
        if (other == 0)
            return; /* answered when the partner comes */
        char a[16], b[16];
        int na = snprintf(a, sizeof a, "%u", (unsigned)other);
        int nb = snprintf(b, sizeof b, "%u", (unsigned)buf->sid);
        send_header(other_cb, other, "x-paired-with", b, (size_t)nb);
        send_msg(other_cb, other, NYLON_METHOD_NEXT, NULL, 0);
        send_header(cb, buf->sid, "x-paired-with", a, (size_t)na);
        send_msg(cb, buf->sid, NYLON_METHOD_NEXT, NULL, 0);
        return;
    }
    case SLEEP:
        sleep(2);
        send_msg(cb, buf->sid, NYLON_METHOD_NEXT, NULL, 0);
        return;
    case NONE:
        return;
    }
}

void close_session_stream(uint32_t sid)
{
    pthread_mutex_lock(&pair_lock);
    if (pair_sid == sid)
        pair_sid = 0;
    pthread_mutex_unlock(&pair_lock);
    uint32_t k = sid % MAX_SESSIONS;
    if (sessions[k].sid == sid)
        sessions[k].cb = NULL;
}

void shutdown(void)
{
    /* A config that is an absolute path names a file to append one line to:
       the test counts the workers that ran shutdown. */
    if (config_len > 1 && config[0] == '/') {
        config[config_len] = '\0';
        FILE *f = fopen(config, "a");
        if (f != NULL) {
            fputs("shutdown\n", f);
            fclose(f);
        }
    }
}
