/*
 * nylon_v2.h: the v2 Nylon plugin ABI, for plugins written in C.
 *
 * Hand-written to match src/abi/v2.rs; the layout is asserted on both sides
 * (the Rust side with const assertions, this side with _Static_assert).
 *
 * A v2 plugin exports one symbol, nylon_v2_plugin, a function that returns a
 * pointer to the plugin's table (nylon_v2_plugin_t). The host checks the
 * table's version and sizes before it uses anything else in it, reads the
 * entry names once, calls init with its own table (nylon_v2_host_t), and from
 * then on calls the plugin's functions directly:
 *
 *   host -> plugin   init, open, phase, ws_event, close, shutdown
 *   plugin -> host   the functions of nylon_v2_host_t, each given the call
 *                    handle of the phase (or WebSocket event) it is used in
 *
 * The guide is docs/v2-abi.md; a complete example is
 * examples/c_plugin/v2_plugin.c. C99; the layout checks need C11 and a
 * 64-bit target.
 *
 * Ownership and lifetime rules (every function below follows them):
 *
 * - Reads (read, header, header_at, response_header_at, number) write into
 *   the plugin's out-pointers. A nylon_v2_str_t returned by a read borrows
 *   host memory. It stays valid until the phase (or ws_event) call returns,
 *   or, for a detached call, until the plugin calls complete. Copy the bytes
 *   to keep them longer. Strings are not NUL-terminated.
 * - Reads see the state at the start of the phase. Commands issued earlier
 *   in the same phase are not visible to reads: a status set in phase 1 is
 *   not what `number(RESPONSE_STATUS)` returns in phase 1.
 * - Commands (set_header, remove_header, set_status, set_body,
 *   stream_header, stream_write, ws_upgrade, ws_send, ws_close, ws_room,
 *   ws_broadcast) copy their arguments before they return, so the plugin may
 *   free or reuse its buffers at once. The host applies them in the order
 *   they were issued, after the phase call returns (or after complete).
 * - A call handle is valid only for the phase call it was passed to. Do not
 *   keep it after the call returns, unless the call was detached.
 * - To finish a phase on another thread: call detach(call) on the thread
 *   inside the phase call, hand the handle to the other thread, and return
 *   NYLON_V2_PENDING. That thread (or any thread) calls complete(call, ...)
 *   exactly once. Between detach and complete, host functions on the handle
 *   may be called from any thread; the host serialises them. After complete
 *   returns NYLON_V2_OK, do not use the handle again: the host reuses it for
 *   the session's next phase.
 * - If the host gives up on a detached call (its timeout passed), every later
 *   host function on that handle, complete included, returns
 *   NYLON_V2_CLOSED and writes nothing. The handle's memory stays valid until
 *   the plugin's shutdown function returns; do not use it after that.
 * - Every plugin function may be called from any host thread, and calls for
 *   different sessions may run at the same time. Calls for one session never
 *   overlap.
 */
#ifndef NYLON_V2_H
#define NYLON_V2_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks nylon_v2_plugin as exported even under -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define NYLON_V2_EXPORT __attribute__((visibility("default")))
#else
#define NYLON_V2_EXPORT
#endif

/* The ABI version this header describes. A host refuses any other. */
#define NYLON_V2_ABI_VERSION 1

/* ------------------------------------------------------------------------ */
/* Strings                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * A borrowed byte string. `ptr` is meaningless when `len == 0` (it may be
 * NULL or dangling): always test `len` first. Not NUL-terminated.
 */
typedef struct nylon_v2_str {
    const uint8_t *ptr;
    size_t len;
} nylon_v2_str_t;

/* ------------------------------------------------------------------------ */
/* Status codes (int32_t): 0 is OK, 1 is pending, negatives are errors      */
/* ------------------------------------------------------------------------ */

#define NYLON_V2_OK 0
/* The phase goes on on another thread; the plugin calls complete later. */
#define NYLON_V2_PENDING 1
#define NYLON_V2_ERROR (-1)
/* A panic was caught at the boundary. */
#define NYLON_V2_PANIC (-2)
/* The header, the index or the entry does not exist. */
#define NYLON_V2_NOT_FOUND (-3)
/* An unknown id, a NULL out-pointer, a bad argument. */
#define NYLON_V2_INVALID (-4)
/* The call or the session is no longer valid (too late, or already done). */
#define NYLON_V2_CLOSED (-5)
/* A bounded buffer is full (the phase's command buffer). */
#define NYLON_V2_FULL (-6)
/* The other side speaks another ABI version or layout. */
#define NYLON_V2_VERSION (-7)

/* ------------------------------------------------------------------------ */
/* Flows: how a phase ends (uint32_t, written to *out_flow)                 */
/* ------------------------------------------------------------------------ */

/* Continue with the next phase. */
#define NYLON_V2_FLOW_NEXT 1
/* The plugin answered the request with the status, headers and body it set. */
#define NYLON_V2_FLOW_END 2
/* The plugin finished a streamed response (stream_header, stream_write). */
#define NYLON_V2_FLOW_STREAM_END 3
/* WebSocket mode, after ws_upgrade: the phase lasts until the connection
 * closes, and the plugin gets ws_event calls meanwhile. */
#define NYLON_V2_FLOW_WEBSOCKET 4

/* ------------------------------------------------------------------------ */
/* Phases (the `phase` argument of nylon_v2_plugin_t.phase)                 */
/* ------------------------------------------------------------------------ */

#define NYLON_V2_PHASE_REQUEST_FILTER 1
#define NYLON_V2_PHASE_RESPONSE_FILTER 2
/* Once per response body chunk. */
#define NYLON_V2_PHASE_RESPONSE_BODY_FILTER 3
#define NYLON_V2_PHASE_LOGGING 4

/* ------------------------------------------------------------------------ */
/* Field ids for host->read                                                 */
/* ------------------------------------------------------------------------ */

/* METHOD, PATH, QUERY, HOST, CLIENT_IP and ERROR are always valid UTF-8;
 * the others are bytes. */
#define NYLON_V2_FIELD_METHOD 1
#define NYLON_V2_FIELD_PATH 2
/* The raw query, without '?'. */
#define NYLON_V2_FIELD_QUERY 3
/* The host, without the port. */
#define NYLON_V2_FIELD_HOST 4
#define NYLON_V2_FIELD_CLIENT_IP 5
/* scheme://host[:port]path[?query] */
#define NYLON_V2_FIELD_URL 6
#define NYLON_V2_FIELD_REQUEST_BODY 7
/* The middleware payload, JSON text; empty when none is configured. */
#define NYLON_V2_FIELD_PAYLOAD 8
/* Route params as a JSON object, or the text `null`. */
#define NYLON_V2_FIELD_PARAMS 9
/* The body a plugin set, else the current body chunk (phase 3), else empty. */
#define NYLON_V2_FIELD_RESPONSE_BODY 10
/* The proxy error message; empty when none. */
#define NYLON_V2_FIELD_ERROR 11

/* ------------------------------------------------------------------------ */
/* Number ids for host->number                                              */
/* ------------------------------------------------------------------------ */

#define NYLON_V2_NUMBER_RESPONSE_STATUS 1
/* The request's Content-Length; 0 when missing or invalid. */
#define NYLON_V2_NUMBER_REQUEST_BYTES 2
/* When the request started, in milliseconds since the Unix epoch. */
#define NYLON_V2_NUMBER_REQUEST_TIMESTAMP_MS 3
/* Milliseconds since the request started. */
#define NYLON_V2_NUMBER_RESPONSE_DURATION_MS 4
/* The length of the response body (as FIELD_RESPONSE_BODY). */
#define NYLON_V2_NUMBER_RESPONSE_BYTES 5

/* ------------------------------------------------------------------------ */
/* WebSocket event and frame kinds                                          */
/* ------------------------------------------------------------------------ */

/* Event kinds passed to ws_event: OPEN, TEXT, BINARY, CLOSE, ERROR.
 * Frame kinds accepted by ws_send and ws_broadcast: TEXT, BINARY. */
#define NYLON_V2_WS_OPEN 1
#define NYLON_V2_WS_TEXT 2
#define NYLON_V2_WS_BINARY 3
#define NYLON_V2_WS_CLOSE 4
#define NYLON_V2_WS_ERROR 5

/* ------------------------------------------------------------------------ */
/* The call handle                                                          */
/* ------------------------------------------------------------------------ */

/* An opaque, borrowed handle to one phase call (or one ws_event call).
 * Never dereference it; pass it back to the host functions. */
typedef struct nylon_v2_call nylon_v2_call_h_ref;

/* ------------------------------------------------------------------------ */
/* The host's table                                                         */
/* ------------------------------------------------------------------------ */

/*
 * The host's functions, handed to the plugin's init. The table is static in
 * the host: the pointer stays valid until the plugin's shutdown returns.
 *
 * Every function takes the call handle of the phase it is used in. With a
 * NULL handle, or a handle the host has revoked, they return
 * NYLON_V2_CLOSED (detach and complete return NYLON_V2_INVALID for NULL).
 *
 * Reads return NYLON_V2_OK and write their out-pointers, or an error and
 * write nothing. Commands return NYLON_V2_OK once the arguments are copied,
 * or NYLON_V2_FULL when the phase's command buffer is at its bound (16 MiB
 * of argument bytes or 65536 commands). After a FULL, a phase that returns
 * OK fails with a "queue is full" session error.
 *
 * WebSocket commands issued before a successful upgrade, or after the
 * connection closed, are dropped when the commands apply.
 */
typedef struct nylon_v2_host {
    /* NYLON_V2_ABI_VERSION. */
    uint32_t abi_version;
    /* sizeof(nylon_v2_host_t) as the host was built. */
    uint32_t size;

    /* Reads a byte-string field (NYLON_V2_FIELD_*). INVALID for an unknown
     * field or a NULL out. */
    int32_t (*read)(nylon_v2_call_h_ref *call, uint32_t field, nylon_v2_str_t *out);
    /* The first value of a request header, name matched case-insensitively.
     * NOT_FOUND when absent. */
    int32_t (*header)(nylon_v2_call_h_ref *call, nylon_v2_str_t name, nylon_v2_str_t *out);
    /* The request header at `index` (0-based, in order, names lower-case).
     * NOT_FOUND past the end; INVALID for a NULL out. */
    int32_t (*header_at)(nylon_v2_call_h_ref *call, size_t index, nylon_v2_str_t *name,
                         nylon_v2_str_t *value);
    /* The response header at `index`, as at phase start. NOT_FOUND past the
     * end; INVALID for a NULL out. */
    int32_t (*response_header_at)(nylon_v2_call_h_ref *call, size_t index,
                                  nylon_v2_str_t *name, nylon_v2_str_t *value);
    /* Reads an integer (NYLON_V2_NUMBER_*). INVALID for an unknown id or a
     * NULL out. */
    int32_t (*number)(nylon_v2_call_h_ref *call, uint32_t which, uint64_t *out);

    /* Sets a response header, replacing every value of that name. Name and
     * value must be UTF-8, or the phase fails when the commands apply. */
    int32_t (*set_header)(nylon_v2_call_h_ref *call, nylon_v2_str_t name, nylon_v2_str_t value);
    /* Removes every value of a response header. */
    int32_t (*remove_header)(nylon_v2_call_h_ref *call, nylon_v2_str_t name);
    /* Sets the response status. */
    int32_t (*set_status)(nylon_v2_call_h_ref *call, uint16_t status);
    /* Replaces the response body. */
    int32_t (*set_body)(nylon_v2_call_h_ref *call, nylon_v2_str_t body);
    /* Writes the header of a streamed response. */
    int32_t (*stream_header)(nylon_v2_call_h_ref *call);
    /* Writes one chunk of a streamed response; end the phase with
     * NYLON_V2_FLOW_STREAM_END. */
    int32_t (*stream_write)(nylon_v2_call_h_ref *call, nylon_v2_str_t data);

    /* Asks for the WebSocket handshake; return NYLON_V2_FLOW_WEBSOCKET from
     * the phase. If the handshake fails, the host answers the client itself
     * and the phase ends as END. */
    int32_t (*ws_upgrade)(nylon_v2_call_h_ref *call);
    /* Sends a frame to this connection. `kind` is NYLON_V2_WS_TEXT or
     * NYLON_V2_WS_BINARY, else INVALID. A send that fails when the commands
     * apply ends the session with an error. */
    int32_t (*ws_send)(nylon_v2_call_h_ref *call, uint32_t kind, nylon_v2_str_t data);
    /* Closes the WebSocket; this ends the phase. */
    int32_t (*ws_close)(nylon_v2_call_h_ref *call);
    /* `join` non-zero joins `room`, 0 leaves it. An empty room name is
     * ignored. */
    int32_t (*ws_room)(nylon_v2_call_h_ref *call, nylon_v2_str_t room, uint32_t join);
    /* Sends a frame to every connection in `room`, this one included.
     * `kind` as for ws_send. An empty room name is ignored. */
    int32_t (*ws_broadcast)(nylon_v2_call_h_ref *call, nylon_v2_str_t room, uint32_t kind,
                            nylon_v2_str_t data);

    /* Records an error message for the call (the first 4096 bytes; a later
     * call replaces it). The host reports it if the phase ends with a status
     * other than OK. */
    int32_t (*error)(nylon_v2_call_h_ref *call, nylon_v2_str_t message);
    /* Marks the call as handed to another thread. Call it on the thread
     * inside the phase call, before that call returns NYLON_V2_PENDING. */
    int32_t (*detach)(nylon_v2_call_h_ref *call);
    /* Completes a detached call, from any thread, exactly once. `status` is
     * what the phase call would have returned; `flow` is a NYLON_V2_FLOW_*
     * (ignored for ws_event). INVALID if the call was not detached; CLOSED if
     * the host has given up on it or it was already completed. */
    int32_t (*complete)(nylon_v2_call_h_ref *call, int32_t status, uint32_t flow);
} nylon_v2_host_t;

/* ------------------------------------------------------------------------ */
/* The plugin's table                                                       */
/* ------------------------------------------------------------------------ */

/*
 * The plugin's table, returned by nylon_v2_plugin(). It must stay valid and
 * unchanged while the library is loaded (a static const object is the usual
 * choice), and so must the name and the entry strings it points to.
 */
typedef struct nylon_v2_plugin {
    /* Must be NYLON_V2_ABI_VERSION. */
    uint32_t abi_version;
    /* sizeof(nylon_v2_plugin_t) as the plugin was built. */
    uint32_t size;
    /* sizeof(nylon_v2_host_t) as the plugin was built. */
    uint32_t host_size;
    /* 0. */
    uint32_t reserved;
    /* The plugin's name, reported by `nylon-transport inspect`. */
    nylon_v2_str_t name;
    /* The entry names; an entry's id is its index in this array. */
    const nylon_v2_str_t *entries;
    size_t entry_count;

    /* Creates a plugin instance. `host` is the host's table (keep the
     * pointer); `config` is JSON text, empty when none is configured, valid
     * only during the call. Write the instance to *out_instance and return
     * OK, or return an error status: the host then refuses the plugin. */
    int32_t (*init)(const nylon_v2_host_t *host, nylon_v2_str_t config, void **out_instance);
    /* Opens a session of entry `entry` (an index into `entries`). `session`
     * is a number unique within the host process, for logs. Write the session's state to *out_state and return
     * OK, or return an error status to refuse the session. */
    int32_t (*open)(void *instance, uint32_t entry, uint64_t session, void **out_state);
    /* Runs one phase (NYLON_V2_PHASE_*). Return OK with *out_flow set, or
     * PENDING after detach, or an error status (after `error`, to give a
     * message). */
    int32_t (*phase)(void *state, uint32_t phase, nylon_v2_call_h_ref *call, uint32_t *out_flow);
    /* A WebSocket event (NYLON_V2_WS_*). `data` (the message) is valid only
     * during the call. Commands go through `call` and apply when it returns.
     * Return OK, PENDING after detach, or an error status (ends the
     * session). */
    int32_t (*ws_event)(void *state, uint32_t kind, nylon_v2_str_t data,
                        nylon_v2_call_h_ref *call);
    /* Closes a session; `state` is not used again. Called once per opened
     * session, also after a failure; a detached thread of the session may
     * still be running. */
    void (*close)(void *state);
    /* Destroys the instance; called once, after every session is closed.
     * When it returns, no plugin thread may use a call handle any more. */
    void (*shutdown)(void *instance);
} nylon_v2_plugin_t;

/* The layout src/abi/v2.rs asserts, on 64-bit targets. */
#if !defined(__cplusplus) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && \
    UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
_Static_assert(sizeof(nylon_v2_str_t) == 16, "nylon_v2_str_t must be 16 bytes");
_Static_assert(sizeof(nylon_v2_host_t) == 8 + 19 * 8, "nylon_v2_host_t must be 160 bytes");
_Static_assert(offsetof(nylon_v2_host_t, read) == 8, "nylon_v2_host_t.read at 8");
_Static_assert(offsetof(nylon_v2_host_t, complete) == 8 + 18 * 8,
               "nylon_v2_host_t.complete at 152");
_Static_assert(sizeof(nylon_v2_plugin_t) == 16 + 16 + 16 + 6 * 8,
               "nylon_v2_plugin_t must be 96 bytes");
_Static_assert(offsetof(nylon_v2_plugin_t, name) == 16, "nylon_v2_plugin_t.name at 16");
_Static_assert(offsetof(nylon_v2_plugin_t, entries) == 32, "nylon_v2_plugin_t.entries at 32");
_Static_assert(offsetof(nylon_v2_plugin_t, init) == 48, "nylon_v2_plugin_t.init at 48");
_Static_assert(offsetof(nylon_v2_plugin_t, shutdown) == 88,
               "nylon_v2_plugin_t.shutdown at 88");
#endif

/* ------------------------------------------------------------------------ */
/* The one exported symbol                                                  */
/* ------------------------------------------------------------------------ */

/* Returns the plugin's table. The host calls it (and `nylon-transport
 * inspect` calls it) before init, so it must not depend on anything init
 * sets up. */
NYLON_V2_EXPORT const nylon_v2_plugin_t *nylon_v2_plugin(void);

#ifdef __cplusplus
}
#endif

#endif /* NYLON_V2_H */
