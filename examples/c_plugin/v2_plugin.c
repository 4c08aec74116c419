/*
 * A v2 Nylon plugin in C, written against include/nylon_v2.h only.
 *
 *   cc -shared -fPIC -O2 -Wall -Wextra -Werror -std=c11 -pthread -Iinclude \
 *      -o libc_v2.so examples/c_plugin/v2_plugin.c
 *
 * (-pthread is needed only with a C library older than glibc 2.34, where the
 * thread functions live in libpthread.)
 *
 * Entries:
 *   c_hello   phase 1: reads the path and the x-user header ("anonymous"
 *             when absent), sets x-c-path and x-c-user, status 202, body
 *             "hello from C v2", and ends the request (END).
 *   c_async   phase 1: detaches the call and returns PENDING; a thread sleeps
 *             2 ms, reads the path through the same call handle, sets
 *             x-c-async to it, and completes the phase with NEXT.
 * Every other phase of both entries ends with NEXT.
 *
 * Memory: init mallocs the instance (freed in shutdown), open mallocs the
 * session state (freed in close), c_async mallocs one job per phase (freed
 * by its thread). Strings read from the host are borrowed and are only
 * passed back to host commands, which copy them.
 *
 * Threads: a c_async thread may outlive its session (the host closes a
 * session whose detached phase timed out), so it never touches the session
 * state. It may not outlive the instance: the ABI forbids using a call handle
 * after shutdown returns, so the instance counts running threads and
 * shutdown waits for them.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nylon_v2.h"

/* A nylon_v2_str_t for a string literal: STR_INIT in static initializers,
 * LIT in expressions. */
#define STR_INIT(s) {(const uint8_t *)(s), sizeof(s) - 1}
#define LIT(s) ((nylon_v2_str_t)STR_INIT(s))

/* Returns from the enclosing function when a host call does not return OK. */
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int32_t st_ = (expr);                                                                      \
        if (st_ != NYLON_V2_OK)                                                                    \
            return st_;                                                                            \
    } while (0)

enum entry_id { ENTRY_HELLO = 0, ENTRY_ASYNC = 1, ENTRY_COUNT = 2 };

static const nylon_v2_str_t entries[ENTRY_COUNT] = {
    [ENTRY_HELLO] = STR_INIT("c_hello"),
    [ENTRY_ASYNC] = STR_INIT("c_async"),
};

/* One per init. */
struct instance {
    const nylon_v2_host_t *host;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    unsigned running; /* c_async threads not finished yet */
};

/* One per session. */
struct session {
    struct instance *inst;
    enum entry_id entry;
};

/* What a c_async thread needs: the instance and the detached call. It does
 * not point to the session, which the host may close (after a timeout) while
 * the thread still runs. */
struct job {
    struct instance *inst;
    nylon_v2_call_h_ref *call;
};

static int32_t plugin_init(const nylon_v2_host_t *host, nylon_v2_str_t config, void **out_instance)
{
    (void)config; /* this plugin has no configuration */
    if (host == NULL || out_instance == NULL)
        return NYLON_V2_INVALID;
    if (host->abi_version != NYLON_V2_ABI_VERSION || host->size < sizeof(nylon_v2_host_t))
        return NYLON_V2_VERSION;
    struct instance *inst = malloc(sizeof *inst);
    if (inst == NULL)
        return NYLON_V2_ERROR;
    inst->host = host;
    inst->running = 0;
    if (pthread_mutex_init(&inst->lock, NULL) != 0) {
        free(inst);
        return NYLON_V2_ERROR;
    }
    if (pthread_cond_init(&inst->idle, NULL) != 0) {
        pthread_mutex_destroy(&inst->lock);
        free(inst);
        return NYLON_V2_ERROR;
    }
    *out_instance = inst;
    return NYLON_V2_OK;
}

static int32_t plugin_open(void *instance, uint32_t entry, uint64_t session_id, void **out_state)
{
    (void)session_id;
    if (instance == NULL || out_state == NULL)
        return NYLON_V2_INVALID;
    if (entry >= ENTRY_COUNT)
        return NYLON_V2_NOT_FOUND;
    struct session *s = malloc(sizeof *s);
    if (s == NULL)
        return NYLON_V2_ERROR;
    s->inst = instance;
    s->entry = (enum entry_id)entry;
    *out_state = s;
    return NYLON_V2_OK;
}

/* c_hello, phase 1. Every string passed to a command here is either a
 * literal or a borrowed read, valid until this call returns; the commands
 * copy them. */
static int32_t hello_request(const nylon_v2_host_t *host, nylon_v2_call_h_ref *call,
                             uint32_t *out_flow)
{
    nylon_v2_str_t path;
    TRY(host->read(call, NYLON_V2_FIELD_PATH, &path));

    nylon_v2_str_t user;
    int32_t st = host->header(call, LIT("x-user"), &user);
    if (st == NYLON_V2_NOT_FOUND)
        user = LIT("anonymous");
    else if (st != NYLON_V2_OK)
        return st;

    TRY(host->set_header(call, LIT("x-c-path"), path));
    TRY(host->set_header(call, LIT("x-c-user"), user));
    TRY(host->set_status(call, 202));
    TRY(host->set_body(call, LIT("hello from C v2")));
    *out_flow = NYLON_V2_FLOW_END;
    return NYLON_V2_OK;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
        /* interrupted: sleep for the rest */
    }
}

/* The c_async thread: runs the rest of phase 1 and completes it. */
static void *async_main(void *arg)
{
    struct job *job = arg;
    struct instance *inst = job->inst;
    const nylon_v2_host_t *host = inst->host;
    nylon_v2_call_h_ref *call = job->call;
    free(job);

    sleep_ms(2);

    int32_t status = NYLON_V2_OK;
    nylon_v2_str_t path;
    /* Between detach and complete, host functions on the call may be used
     * from this thread. The path stays valid until complete. */
    int32_t st = host->read(call, NYLON_V2_FIELD_PATH, &path);
    if (st == NYLON_V2_OK)
        st = host->set_header(call, LIT("x-c-async"), path);
    if (st != NYLON_V2_OK) {
        /* CLOSED: the host gave up on the phase (timeout). complete will
         * say CLOSED too; calling it is still harmless. */
        host->error(call, LIT("c_async: host call failed"));
        status = st;
    }
    /* Exactly once. After it returns, the handle is not used again. */
    host->complete(call, status, NYLON_V2_FLOW_NEXT);

    pthread_mutex_lock(&inst->lock);
    if (--inst->running == 0)
        pthread_cond_broadcast(&inst->idle);
    pthread_mutex_unlock(&inst->lock);
    return NULL;
}

/* c_async, phase 1: detach, start the thread, return PENDING. */
static int32_t async_request(struct instance *inst, nylon_v2_call_h_ref *call)
{
    const nylon_v2_host_t *host = inst->host;
    struct job *job = malloc(sizeof *job);
    if (job == NULL) {
        host->error(call, LIT("c_async: out of memory"));
        return NYLON_V2_ERROR;
    }
    job->inst = inst;
    job->call = call;

    /* Before the handle goes to another thread. */
    int32_t st = host->detach(call);
    if (st != NYLON_V2_OK) {
        free(job);
        return st;
    }

    pthread_mutex_lock(&inst->lock);
    inst->running++;
    pthread_mutex_unlock(&inst->lock);

    pthread_t thread;
    if (pthread_create(&thread, NULL, async_main, job) != 0) {
        free(job);
        pthread_mutex_lock(&inst->lock);
        inst->running--;
        pthread_mutex_unlock(&inst->lock);
        /* The call is detached: end it through complete, from this thread,
         * and still return PENDING. */
        host->error(call, LIT("c_async: cannot start a thread"));
        host->complete(call, NYLON_V2_ERROR, 0);
        return NYLON_V2_PENDING;
    }
    pthread_detach(thread);
    return NYLON_V2_PENDING;
}

static int32_t plugin_phase(void *state, uint32_t phase, nylon_v2_call_h_ref *call,
                            uint32_t *out_flow)
{
    if (state == NULL || out_flow == NULL)
        return NYLON_V2_INVALID;
    const struct session *s = state;
    const nylon_v2_host_t *host = s->inst->host;
    if (phase == NYLON_V2_PHASE_REQUEST_FILTER) {
        switch (s->entry) {
        case ENTRY_HELLO:
            return hello_request(host, call, out_flow);
        case ENTRY_ASYNC:
            return async_request(s->inst, call);
        default:
            return NYLON_V2_INVALID;
        }
    }
    *out_flow = NYLON_V2_FLOW_NEXT;
    return NYLON_V2_OK;
}

static int32_t plugin_ws_event(void *state, uint32_t kind, nylon_v2_str_t data,
                               nylon_v2_call_h_ref *call)
{
    (void)state;
    (void)kind;
    (void)data;
    (void)call;
    return NYLON_V2_OK;
}

static void plugin_close(void *state)
{
    free(state);
}

static void plugin_shutdown(void *instance)
{
    struct instance *inst = instance;
    if (inst == NULL)
        return;
    /* No c_async thread may use its call handle after this returns. */
    pthread_mutex_lock(&inst->lock);
    while (inst->running > 0)
        pthread_cond_wait(&inst->idle, &inst->lock);
    pthread_mutex_unlock(&inst->lock);
    pthread_cond_destroy(&inst->idle);
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

static const nylon_v2_plugin_t table = {
    .abi_version = NYLON_V2_ABI_VERSION,
    .size = sizeof(nylon_v2_plugin_t),
    .host_size = sizeof(nylon_v2_host_t),
    .reserved = 0,
    .name = STR_INIT("c-v2"),
    .entries = entries,
    .entry_count = ENTRY_COUNT,
    .init = plugin_init,
    .open = plugin_open,
    .phase = plugin_phase,
    .ws_event = plugin_ws_event,
    .close = plugin_close,
    .shutdown = plugin_shutdown,
};

const nylon_v2_plugin_t *nylon_v2_plugin(void)
{
    return &table;
}
