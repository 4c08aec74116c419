//go:build nylon_legacy && nylon_testhost

// A minimal legacy host in C for the legacy backend's own Go tests
// (legacy_testhost_test.go, run with -tags nylon_legacy,nylon_testhost, and
// with -race in CI): it answers every read, inline inside the callback or
// from a thread of its own (but never a read of 112, Error), sends OnOpen
// inside the upgrade's call, and counts each session's phase ends.

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "_cgo_export.h"

#define TH_MAX 65536

static _Atomic uint32_t th_ends[TH_MAX];
static _Atomic uint32_t th_last[TH_MAX];
static _Atomic int th_threaded;

struct th_reply {
	uint32_t sid, method;
	char text[48];
	int n;
};

static void *th_reply_thread(void *arg) {
	struct th_reply *r = arg;
	FfiBuffer b;
	memset(&b, 0, sizeof b);
	b.sid = r->sid;
	b.method = r->method;
	b.ptr = (const unsigned char *)r->text;
	b.len = (uint64_t)r->n;
	event_stream(&b);
	free(r);
	return NULL;
}

// A read's reply is "<method>:<sid>", or the decimal sid for a number read.
static void th_callback(const FfiBuffer *b) {
	uint32_t m = b->method, sid = b->sid % TH_MAX;
	if (m == 1 || m == 2 || m == 105 || m == 303 || m == 0x4E590001u) {
		atomic_store(&th_last[sid], m);
		atomic_fetch_add(&th_ends[sid], 1);
		return;
	}
	if (m == 300) {
		// An upgrade: OnOpen at once, inside this call, as a host may.
		FfiBuffer open;
		memset(&open, 0, sizeof open);
		open.sid = b->sid;
		open.method = 350;
		event_stream(&open);
		// Then take a while to return: OnOpen is queued before the upgrade
		// call returns to the plugin, and a worker may run it meanwhile.
		usleep(2000);
		return;
	}
	int number = m == 108 || m == 109 || m == 111 || m == 210 || m == 211;
	int read = m == 3 || (m >= 107 && m <= 112) || (m >= 200 && m <= 211);
	if (!read || m == 112) {
		return; // 112 (Error) is never answered: only a close ends its wait
	}
	struct th_reply *r = malloc(sizeof *r);
	if (r == NULL) {
		abort();
	}
	r->sid = b->sid;
	r->method = m;
	r->n = number ? snprintf(r->text, sizeof r->text, "%u", b->sid)
	              : snprintf(r->text, sizeof r->text, "%u:%u", m, b->sid);
	if (m == 110 || m == 202) {
		r->n = 0; // an empty (malformed) header list: decoded as none
	}
	if (atomic_load(&th_threaded)) {
		pthread_t t;
		if (pthread_create(&t, NULL, th_reply_thread, r) != 0) {
			abort();
		}
		pthread_detach(t);
		return;
	}
	th_reply_thread(r);
}

void th_set_threaded(int on) { atomic_store(&th_threaded, on); }

int th_open(uint32_t sid, const char *entry, uint32_t n) {
	atomic_store(&th_ends[sid % TH_MAX], 0);
	return register_session_stream(sid, (char *)entry, n, th_callback);
}

void th_phase(uint32_t sid, uint8_t phase) {
	FfiBuffer b;
	memset(&b, 0, sizeof b);
	b.sid = sid;
	b.phase = phase;
	event_stream(&b);
}

void th_event(uint32_t sid, uint32_t method, const char *p, uint64_t n) {
	FfiBuffer b;
	memset(&b, 0, sizeof b);
	b.sid = sid;
	b.method = method;
	b.ptr = (const unsigned char *)p;
	b.len = n;
	event_stream(&b);
}

void th_close(uint32_t sid) { close_session_stream(sid); }

uint32_t th_ends_of(uint32_t sid) { return atomic_load(&th_ends[sid % TH_MAX]); }

uint32_t th_last_of(uint32_t sid) { return atomic_load(&th_last[sid % TH_MAX]); }
