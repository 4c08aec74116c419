/*
 * A broken v2 plugin for loader and inspect tests: its table has the layout
 * of include/nylon_v2.h and the name and entries of v2_plugin.c, but claims
 * ABI version 2. A host that speaks version 1 must refuse it before it calls
 * anything but nylon_v2_plugin, and `nylon-transport inspect` must report the
 * mismatch and exit with status 1.
 *
 *   cc -shared -fPIC -O2 -Wall -Wextra -Werror -std=c11 -Iinclude \
 *      -o libv2_bad_version.so examples/c_plugin/v2_bad_version.c
 *
 * The functions are stubs: a host that honours the version check never calls
 * them, and each refuses with NYLON_V2_VERSION if one does.
 */
#include "nylon_v2.h"

#define STR_INIT(s) {(const uint8_t *)(s), sizeof(s) - 1}

/* The version this table claims; the host speaks NYLON_V2_ABI_VERSION (1). */
#define CLAIMED_ABI_VERSION 2

static const nylon_v2_str_t entries[] = {
    STR_INIT("c_hello"),
    STR_INIT("c_async"),
};

static int32_t stub_init(const nylon_v2_host_t *host, nylon_v2_str_t config, void **out_instance)
{
    (void)host;
    (void)config;
    (void)out_instance;
    return NYLON_V2_VERSION;
}

static int32_t stub_open(void *instance, uint32_t entry, uint64_t session, void **out_state)
{
    (void)instance;
    (void)entry;
    (void)session;
    (void)out_state;
    return NYLON_V2_VERSION;
}

static int32_t stub_phase(void *state, uint32_t phase, nylon_v2_call_h_ref *call,
                          uint32_t *out_flow)
{
    (void)state;
    (void)phase;
    (void)call;
    (void)out_flow;
    return NYLON_V2_VERSION;
}

static int32_t stub_ws_event(void *state, uint32_t kind, nylon_v2_str_t data,
                             nylon_v2_call_h_ref *call)
{
    (void)state;
    (void)kind;
    (void)data;
    (void)call;
    return NYLON_V2_VERSION;
}

static void stub_close(void *state)
{
    (void)state;
}

static void stub_shutdown(void *instance)
{
    (void)instance;
}

static const nylon_v2_plugin_t table = {
    .abi_version = CLAIMED_ABI_VERSION,
    .size = sizeof(nylon_v2_plugin_t),
    .host_size = sizeof(nylon_v2_host_t),
    .reserved = 0,
    .name = STR_INIT("c-v2"),
    .entries = entries,
    .entry_count = sizeof entries / sizeof entries[0],
    .init = stub_init,
    .open = stub_open,
    .phase = stub_phase,
    .ws_event = stub_ws_event,
    .close = stub_close,
    .shutdown = stub_shutdown,
};

const nylon_v2_plugin_t *nylon_v2_plugin(void)
{
    return &table;
}
