/*
 * nylon_legacy.h: the legacy Nylon plugin ABI, for plugins written in C.
 *
 * This is the ABI today's Nylon host (and nylon-transport's LegacyPlugin)
 * loads with dlopen: six exported C symbols and one message struct,
 * FfiBuffer, passed by pointer in both directions.
 *
 *   host -> plugin   event_stream(const FfiBuffer *)
 *   plugin -> host   the data_event_fn callback given to register_session_stream
 *
 * Reference: legacy-abi.md sections 1, 2 and 4; the Rust definition is
 * src/abi/legacy.rs in nylon-transport. C99; the layout checks need C11.
 *
 * Name clash: the symbol `shutdown` is also libc's `int shutdown(int, int)`.
 * Do not include <sys/socket.h> in the translation unit that defines the
 * plugin's `shutdown`, and make sure the plugin really exports it: if it does
 * not, dlsym(handle, "shutdown") silently finds libc's function instead.
 */
#ifndef NYLON_LEGACY_H
#define NYLON_LEGACY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the six ABI symbols as exported even under -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define NYLON_EXPORT __attribute__((visibility("default")))
#else
#define NYLON_EXPORT
#endif

/* ------------------------------------------------------------------------ */
/* The message                                                              */
/* ------------------------------------------------------------------------ */

/*
 * One message of the protocol, in either direction (32 bytes, align 8):
 *
 *   offset 0  sid     u32   session id given to register_session_stream
 *   offset 4  phase   u8    1..4 = "start this phase"; 0 on everything else
 *          5  (3 bytes padding, unspecified, never read)
 *   offset 8  method  u32   NYLON_METHOD_*; 0 = phase start (host -> plugin)
 *         12  (4 bytes padding)
 *   offset 16 ptr     payload bytes
 *   offset 24 len     payload length in bytes
 *
 * Ownership: the struct and its payload belong to the sender and are valid
 * only during the call that passes them. A receiver that needs the bytes
 * later must copy them before returning. Payloads are not NUL-terminated.
 *
 * When len == 0, ptr is meaningless: the host passes a non-NULL dangling
 * pointer, a plugin may pass NULL. Always test len, never ptr.
 *
 * The host ignores the phase byte of plugin -> host messages; send 0.
 */
typedef struct FfiBuffer {
    uint32_t sid;
    uint8_t phase;
    uint32_t method;
    const unsigned char *ptr;
    uint64_t len;
} FfiBuffer;

#if !defined(__cplusplus) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(FfiBuffer) == 32, "FfiBuffer must be 32 bytes");
_Static_assert(offsetof(FfiBuffer, sid) == 0, "FfiBuffer.sid at 0");
_Static_assert(offsetof(FfiBuffer, phase) == 4, "FfiBuffer.phase at 4");
_Static_assert(offsetof(FfiBuffer, method) == 8, "FfiBuffer.method at 8");
_Static_assert(offsetof(FfiBuffer, ptr) == 16, "FfiBuffer.ptr at 16");
_Static_assert(offsetof(FfiBuffer, len) == 24, "FfiBuffer.len at 24");
#endif

/*
 * The host callback (plugin -> host), handed to register_session_stream.
 *
 * - The function pointer stays valid for the life of the process.
 * - It may be called from any thread, concurrently, at any time while the
 *   session is open; messages for an unknown or closed sid are dropped.
 * - It copies the payload before returning, so the plugin may free or reuse
 *   the buffer as soon as it returns.
 * - Messages of one session are processed in the order the callback was
 *   called.
 * - Re-entrancy: the host's reply to a read (and any follow-up event) can be
 *   delivered by calling event_stream INSIDE this callback call, on the same
 *   thread, before the callback returns; or later from another host thread.
 *   So update your state before calling the callback, and never hold a
 *   non-recursive lock across the call.
 */
typedef void (*data_event_fn)(const FfiBuffer *);

/* ------------------------------------------------------------------------ */
/* The six symbols a plugin must export (all mandatory)                     */
/* ------------------------------------------------------------------------ */

/*
 * Called once after loading, and again on every config reload. cfg is the
 * plugin's YAML config as JSON text, NOT NUL-terminated, valid only during
 * the call: copy it. With no config, cfg_len is 0 and cfg is a dangling
 * non-NULL pointer (test cfg_len, not cfg).
 */
NYLON_EXPORT void initialize(const uint8_t *cfg, uint32_t cfg_len);

/* Resolved by the host but never called: no message hands memory over. */
NYLON_EXPORT void plugin_free(uint8_t *p);

/*
 * Opens session `sid` for the phase handler named by entry[0..entry_len]
 * (not NUL-terminated, valid only during the call). Store cb per session.
 * Return 1 to accept, 0 to refuse (unknown entry); the host tests != 0.
 * The host registers the session before calling, so the plugin may already
 * call cb from inside this function.
 */
NYLON_EXPORT uint8_t register_session_stream(uint32_t sid, const uint8_t *entry,
                                             uint32_t entry_len, data_event_fn cb);

/*
 * Every host -> plugin message:
 * - phase 1..4, method 0, len 0: start that phase. The plugin must end it by
 *   sending NEXT, END (or SET_RESPONSE_STREAM_END / WEBSOCKET_CLOSE) through
 *   cb, now or later, from any thread.
 * - phase 0, method = a read's id: the reply to that read (exactly one per
 *   read). It may arrive re-entrantly inside the cb call that sent the read.
 * - phase 0, method 350..354: a WebSocket event.
 * buf and buf->ptr are valid only until this function returns.
 */
NYLON_EXPORT void event_stream(const FfiBuffer *buf);

/* The request is over: forget session sid. Later messages for it are dropped. */
NYLON_EXPORT void close_session_stream(uint32_t sid);

/* The host is stopping. Open sessions are not closed first. */
NYLON_EXPORT void shutdown(void);

/* ------------------------------------------------------------------------ */
/* Phases (FfiBuffer.phase)                                                 */
/* ------------------------------------------------------------------------ */

#define NYLON_PHASE_ZERO                 0 /* replies to reads, events, plugin messages */
#define NYLON_PHASE_REQUEST_FILTER       1
#define NYLON_PHASE_RESPONSE_FILTER      2
#define NYLON_PHASE_RESPONSE_BODY_FILTER 3 /* once per response body chunk */
#define NYLON_PHASE_LOGGING              4

/* ------------------------------------------------------------------------ */
/* Method ids (FfiBuffer.method)                                            */
/* ------------------------------------------------------------------------ */

/*
 * Controls (1, 2) end the phase. Reads (3, 107..112, 200..211) get exactly
 * one reply: event_stream with phase 0 and the same method id. Commands get
 * no reply; 105 and 303 also end the phase. 350..354 are host -> plugin
 * events. Text payloads are raw bytes with no terminator. Notable payloads:
 *   100 SET_RESPONSE_HEADER: FlatBuffers nylon_plugin.HeaderKeyValue, see
 *       nylon_header_kv_encode below; an invalid buffer is a session error.
 *   102 SET_RESPONSE_STATUS: 2 bytes, big-endian u16.
 *   201 READ_REQUEST_HEADER: the header name; the reply is its first value.
 * Any id not listed here is an error for the session.
 */
#define NYLON_METHOD_PHASE_START                      0u /* host -> plugin only */

#define NYLON_METHOD_NEXT                             1u
#define NYLON_METHOD_END                              2u
#define NYLON_METHOD_GET_PAYLOAD                      3u

#define NYLON_METHOD_SET_RESPONSE_HEADER              100u
#define NYLON_METHOD_REMOVE_RESPONSE_HEADER           101u
#define NYLON_METHOD_SET_RESPONSE_STATUS              102u
#define NYLON_METHOD_SET_RESPONSE_FULL_BODY           103u
#define NYLON_METHOD_SET_RESPONSE_STREAM_DATA         104u
#define NYLON_METHOD_SET_RESPONSE_STREAM_END          105u
#define NYLON_METHOD_SET_RESPONSE_STREAM_HEADER       106u
#define NYLON_METHOD_READ_RESPONSE_FULL_BODY          107u
#define NYLON_METHOD_READ_RESPONSE_STATUS             108u
#define NYLON_METHOD_READ_RESPONSE_BYTES              109u
#define NYLON_METHOD_READ_RESPONSE_HEADERS            110u
#define NYLON_METHOD_READ_RESPONSE_DURATION           111u
#define NYLON_METHOD_READ_RESPONSE_ERROR              112u

#define NYLON_METHOD_READ_REQUEST_FULL_BODY           200u
#define NYLON_METHOD_READ_REQUEST_HEADER              201u
#define NYLON_METHOD_READ_REQUEST_HEADERS             202u
#define NYLON_METHOD_READ_REQUEST_URL                 203u
#define NYLON_METHOD_READ_REQUEST_PATH                204u
#define NYLON_METHOD_READ_REQUEST_QUERY               205u
#define NYLON_METHOD_READ_REQUEST_PARAMS              206u
#define NYLON_METHOD_READ_REQUEST_HOST                207u
#define NYLON_METHOD_READ_REQUEST_CLIENT_IP           208u
#define NYLON_METHOD_READ_REQUEST_METHOD              209u
#define NYLON_METHOD_READ_REQUEST_BYTES               210u
#define NYLON_METHOD_READ_REQUEST_TIMESTAMP           211u

#define NYLON_METHOD_WEBSOCKET_UPGRADE                300u
#define NYLON_METHOD_WEBSOCKET_SEND_TEXT              301u
#define NYLON_METHOD_WEBSOCKET_SEND_BINARY            302u
#define NYLON_METHOD_WEBSOCKET_CLOSE                  303u
#define NYLON_METHOD_WEBSOCKET_JOIN_ROOM              310u
#define NYLON_METHOD_WEBSOCKET_LEAVE_ROOM             311u
#define NYLON_METHOD_WEBSOCKET_BROADCAST_ROOM_TEXT    312u
#define NYLON_METHOD_WEBSOCKET_BROADCAST_ROOM_BINARY  313u

#define NYLON_METHOD_WEBSOCKET_ON_OPEN                350u
#define NYLON_METHOD_WEBSOCKET_ON_MESSAGE_TEXT        351u
#define NYLON_METHOD_WEBSOCKET_ON_MESSAGE_BINARY      352u
#define NYLON_METHOD_WEBSOCKET_ON_CLOSE               353u
#define NYLON_METHOD_WEBSOCKET_ON_ERROR               354u

/* ------------------------------------------------------------------------ */
/* SET_RESPONSE_HEADER payload                                              */
/* ------------------------------------------------------------------------ */

static inline void nylon_fb_put_u16_(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)((v >> 8) & 0xffu);
}

static inline void nylon_fb_put_u32_(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)((v >> 8) & 0xffu);
    p[2] = (uint8_t)((v >> 16) & 0xffu);
    p[3] = (uint8_t)((v >> 24) & 0xffu);
}

/*
 * Writes into out[0..cap) a FlatBuffers buffer whose root table is
 *   nylon_plugin.HeaderKeyValue { key: string (required); value: string (required); }
 * with no file identifier and no size prefix: the payload of
 * NYLON_METHOD_SET_RESPONSE_HEADER. Returns the number of bytes written, or 0
 * if cap is too small, a string is NULL with a non-zero length, or the buffer
 * would exceed the FlatBuffers 2 GiB limit. Nothing is allocated; key and val
 * need no terminator and must not overlap out.
 *
 * Size: 32 + pad4(klen + 1) + pad4(vlen + 1) bytes.
 *
 * Layout (all little-endian; every uoffset/soffset 4-aligned, vtable 2-aligned):
 *    0  u32  root uoffset = 12                  -> table
 *    4  u16  vtable size = 8
 *    6  u16  table size = 12
 *    8  u16  voffset 4 (key)   = 4              field offset inside the table
 *   10  u16  voffset 6 (value) = 8
 *   12  i32  soffset = 12 - 4 = 8               table - vtable
 *   16  u32  uoffset = 24 - 16 = 8              -> key string
 *   20  u32  uoffset = V - 20                   -> value string
 *   24  key string:   u32 klen, klen bytes, NUL, zero padding to a multiple of 4
 *    V  value string: u32 vlen, vlen bytes, NUL, zero padding to a multiple of 4
 *       (V = 28 + pad4(klen + 1))
 */
static inline size_t nylon_header_kv_encode(uint8_t *out, size_t cap, const char *key,
                                            size_t klen, const char *val, size_t vlen)
{
    const uint64_t max_size = 0x7fffffffu; /* FlatBuffers' largest buffer */
    uint64_t kblock, vblock, total;
    size_t kpos, vpos, end, i;

    if ((klen != 0 && key == NULL) || (vlen != 0 && val == NULL))
        return 0;
    if ((uint64_t)klen > max_size || (uint64_t)vlen > max_size)
        return 0;
    kblock = 4u + (((uint64_t)klen + 1u + 3u) & ~(uint64_t)3u);
    vblock = 4u + (((uint64_t)vlen + 1u + 3u) & ~(uint64_t)3u);
    total = 24u + kblock + vblock;
    if (total > max_size || out == NULL || (uint64_t)cap < total)
        return 0;

    kpos = 24;
    vpos = kpos + (size_t)kblock;
    end = (size_t)total;

    nylon_fb_put_u32_(out + 0, 12u);                        /* root -> table at 12 */
    nylon_fb_put_u16_(out + 4, 8u);                         /* vtable: its size */
    nylon_fb_put_u16_(out + 6, 12u);                        /* table inline size */
    nylon_fb_put_u16_(out + 8, 4u);                         /* key at table + 4 */
    nylon_fb_put_u16_(out + 10, 8u);                        /* value at table + 8 */
    nylon_fb_put_u32_(out + 12, 8u);                        /* vtable = 12 - 8 = 4 */
    nylon_fb_put_u32_(out + 16, (uint32_t)(kpos - 16));     /* -> key string */
    nylon_fb_put_u32_(out + 20, (uint32_t)(vpos - 20));     /* -> value string */

    nylon_fb_put_u32_(out + kpos, (uint32_t)klen);
    if (klen != 0)
        memcpy(out + kpos + 4, key, klen);
    for (i = kpos + 4 + klen; i < vpos; i++)                /* NUL + padding */
        out[i] = 0;

    nylon_fb_put_u32_(out + vpos, (uint32_t)vlen);
    if (vlen != 0)
        memcpy(out + vpos + 4, val, vlen);
    for (i = vpos + 4 + vlen; i < end; i++)                 /* NUL + padding */
        out[i] = 0;

    return end;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NYLON_LEGACY_H */
