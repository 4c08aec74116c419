/*
 * A broken legacy plugin for loader tests: it exports five of the six
 * symbols and NOT `shutdown`, so dlsym(handle, "shutdown") falls through to
 * libc's `int shutdown(int, int)`. A careful loader (nylon-transport's
 * `inspect`) must report that the symbol resolves outside the plugin.
 *
 *   cc -shared -fPIC -o libmissing_shutdown.so examples/c_plugin/missing_shutdown.c -Iinclude
 *
 * plugin_free calls free() so the library surely links libc (a library
 * that used nothing from libc could lose it under --as-needed, and then
 * "shutdown" would simply be missing).
 */
#include <stdlib.h>

#include "nylon_legacy.h"

void initialize(const uint8_t *cfg, uint32_t cfg_len)
{
    (void)cfg;
    (void)cfg_len;
}

void plugin_free(uint8_t *p)
{
    free(p);
}

uint8_t register_session_stream(uint32_t sid, const uint8_t *entry, uint32_t entry_len,
                                data_event_fn cb)
{
    (void)sid;
    (void)entry;
    (void)entry_len;
    (void)cb;
    return 0;
}

void event_stream(const FfiBuffer *buf)
{
    (void)buf;
}

void close_session_stream(uint32_t sid)
{
    (void)sid;
}

/* No shutdown: deliberately. */
