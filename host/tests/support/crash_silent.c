/*
 * The crash plugin of the root crate (examples/c_plugin/crash.c, included
 * unchanged) plus one entry the host's isolation tests need:
 *
 *   silent   phase 1: nothing, ever (the request stays in flight on its
 *            worker until the phase timeout or the worker's death).
 *   slow     phase 1: sleeps 3 s on the calling thread, then answers as
 *            `ok` does (a worker runs one phase at a time, so the requests
 *            sent meanwhile queue behind it on that worker).
 *
 * Every other entry (ok, crash_segv, crash_abort, crash_exit, crash_fatal,
 * crash_loop) is crash.c's. Compiled by host/tests/common (crash_plugin()).
 */
#define _POSIX_C_SOURCE 200809L
#define register_session_stream crash_register_session_stream
#define event_stream crash_event_stream
#define close_session_stream crash_close_session_stream
#include "../../../examples/c_plugin/crash.c"
#undef register_session_stream
#undef event_stream
#undef close_session_stream

#include <time.h>

#define SILENT_SLOTS 4096

/* The sid of each silent session, by sid modulo the table size. */
static uint32_t silent[SILENT_SLOTS];
static uint8_t silent_used[SILENT_SLOTS];
/* The sid of each slow session. */
static uint32_t slow[SILENT_SLOTS];
static uint8_t slow_used[SILENT_SLOTS];

uint8_t register_session_stream(uint32_t sid, const uint8_t *entry, uint32_t entry_len,
                                data_event_fn cb)
{
    uint32_t k = sid % SILENT_SLOTS;
    if (entry_len == 6 && memcmp(entry, "silent", 6) == 0) {
        silent[k] = sid;
        silent_used[k] = 1;
        return 1;
    }
    if (silent_used[k] && silent[k] == sid)
        silent_used[k] = 0;
    if (entry_len == 4 && memcmp(entry, "slow", 4) == 0) {
        slow[k] = sid;
        slow_used[k] = 1;
        return crash_register_session_stream(sid, (const uint8_t *)"ok", 2, cb);
    }
    if (slow_used[k] && slow[k] == sid)
        slow_used[k] = 0;
    return crash_register_session_stream(sid, entry, entry_len, cb);
}

void event_stream(const FfiBuffer *buf)
{
    if (buf != NULL) {
        uint32_t k = buf->sid % SILENT_SLOTS;
        if (silent_used[k] && silent[k] == buf->sid)
            return;
        if (slow_used[k] && slow[k] == buf->sid && buf->phase == NYLON_PHASE_REQUEST_FILTER) {
            struct timespec ts = {3, 0};
            while (nanosleep(&ts, &ts) != 0) {
            }
        }
    }
    crash_event_stream(buf);
}

void close_session_stream(uint32_t sid)
{
    uint32_t k = sid % SILENT_SLOTS;
    if (silent_used[k] && silent[k] == sid) {
        silent_used[k] = 0;
        return;
    }
    if (slow_used[k] && slow[k] == sid)
        slow_used[k] = 0;
    crash_close_session_stream(sid);
}
