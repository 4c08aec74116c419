/*
 * A broken legacy plugin for loader tests: it exports five of the six
 * symbols and NOT `event_stream`, so a loader must refuse it.
 *
 *   cc -shared -fPIC -o libmissing_symbol.so examples/c_plugin/missing_symbol.c -Iinclude
 */
#include "nylon_legacy.h"

void initialize(const uint8_t *cfg, uint32_t cfg_len)
{
    (void)cfg;
    (void)cfg_len;
}

void plugin_free(uint8_t *p)
{
    (void)p;
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

/* No event_stream: deliberately. */

void close_session_stream(uint32_t sid)
{
    (void)sid;
}

void shutdown(void)
{
}
