/* Unit tests of the protocol codec (proto/rdp.c), the socket path rules (proto/rdp_path.c)
 * and message transport with fds (proto/rdp_io.c). Hostile frames are built byte by byte,
 * independently of the encoders, so a bug shared by encoder and checker cannot hide. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "fdcheck.h"
#include "../proto/rdp_io.h"
#include "../proto/rdp_path.h"


/* ---- helpers that do not use the codec ---- */

static uint16_t ld16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p)
{
	return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

static void st16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void st32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void st64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Write a header by hand: length@0, type@4, flags@6, id@8, count@12. */
static void mkhdr(uint8_t *p, uint32_t length, uint16_t type, uint16_t flags, uint32_t id,
		  uint32_t count)
{
	st32(p, length);
	st16(p + 4, type);
	st16(p + 6, flags);
	st32(p + 8, id);
	st32(p + 12, count);
}

/* A hand-built frame of 'len' bytes: header claiming 'len', then a zeroed body. */
static uint8_t frame[RDP_MSG_MAX + 64];

static size_t mkframe(uint16_t type, uint32_t count, size_t body)
{
	memset(frame, 0, RDP_HDR_SIZE + body);
	mkhdr(frame, (uint32_t)(RDP_HDR_SIZE + body), type, 0, 7, count);
	return RDP_HDR_SIZE + body;
}

static uint32_t chk_req(const void *msg, size_t len, size_t nfds)
{
	struct rdp_hdr h;
	return rdp_check_request(msg, len, nfds, &h);
}

static uint32_t chk_dmn(const void *msg, size_t len, size_t nfds)
{
	struct rdp_hdr h;
	return rdp_check_daemon_msg(msg, len, nfds, &h);
}

static void assert_hdr(const uint8_t *p, uint32_t length, uint16_t type, uint32_t id,
		       uint32_t count)
{
	assert_int_equal(ld32(p), length);
	assert_int_equal(ld16(p + 4), type);
	assert_int_equal(ld16(p + 6), 0);
	assert_int_equal(ld32(p + 8), id);
	assert_int_equal(ld32(p + 12), count);
}

/* ---- the cursor ---- */

static void test_buf_little_endian(void **state)
{
	(void)state;
	uint8_t mem[14];
	struct rdp_buf b = rdp_buf_init(mem, sizeof(mem));
	rdp_put_u16(&b, 0x0102);
	rdp_put_u32(&b, 0x03040506);
	rdp_put_u64(&b, 0x0708090a0b0c0d0eull);
	assert_false(b.err);
	assert_int_equal(b.pos, 14);
	static const uint8_t want[14] = { 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0e,
					  0x0d, 0x0c, 0x0b, 0x0a, 0x09, 0x08, 0x07 };
	assert_memory_equal(mem, want, sizeof(want));

	b = rdp_buf_init(mem, sizeof(mem));
	assert_int_equal(rdp_get_u16(&b), 0x0102);
	assert_int_equal(rdp_get_u32(&b), 0x03040506);
	assert_true(rdp_get_u64(&b) == 0x0708090a0b0c0d0eull);
	assert_false(b.err);
}

/* A put or get that does not fit sets err, touches nothing, and every later one fails too,
 * so a sequence is checked once at the end. */
static void test_buf_overrun_is_sticky(void **state)
{
	(void)state;
	uint8_t mem[8];
	memset(mem, 0xaa, sizeof(mem));
	struct rdp_buf b = rdp_buf_init(mem, 5);
	rdp_put_u32(&b, 0x11111111);
	assert_false(b.err);
	rdp_put_u32(&b, 0x22222222);
	assert_true(b.err);
	assert_int_equal(b.pos, 4);
	rdp_put_bytes(&b, "x", 1); /* would fit, but the cursor is already in error */
	assert_int_equal(b.pos, 4);
	assert_int_equal(mem[4], 0xaa);
	assert_int_equal(mem[5], 0xaa);

	b = rdp_buf_init(mem, 3);
	assert_int_equal(rdp_get_u32(&b), 0);
	assert_true(b.err);
	assert_int_equal(rdp_get_u16(&b), 0);
	assert_int_equal(b.pos, 0);
	assert_true(rdp_get_u64(&b) == 0);
}

static void test_hdr_put_get(void **state)
{
	(void)state;
	uint8_t mem[RDP_HDR_SIZE];
	struct rdp_hdr h = { .length = 0xa1a2a3a4, .type = 0xb1b2, .flags = 0xc1c2,
			     .id = 0xd1d2d3d4, .count = 0xe1e2e3e4 };
	struct rdp_buf b = rdp_buf_init(mem, sizeof(mem));
	rdp_hdr_put(&b, &h);
	assert_false(b.err);
	static const uint8_t want[RDP_HDR_SIZE] = { 0xa4, 0xa3, 0xa2, 0xa1, 0xb2, 0xb1, 0xc2, 0xc1,
						    0xd4, 0xd3, 0xd2, 0xd1, 0xe4, 0xe3, 0xe2, 0xe1 };
	assert_memory_equal(mem, want, sizeof(want));
	struct rdp_hdr g;
	b = rdp_buf_init(mem, sizeof(mem));
	rdp_hdr_get(&b, &g);
	assert_int_equal(g.length, h.length);
	assert_int_equal(g.type, h.type);
	assert_int_equal(g.flags, h.flags);
	assert_int_equal(g.id, h.id);
	assert_int_equal(g.count, h.count);
}

/* ---- round trips and byte layout ---- */

static void test_hello(void **state)
{
	(void)state;
	uint8_t m[64];
	size_t n = rdp_encode_hello(m, sizeof(m), 0x11223344, RDP_VERSION, 0xdeadbeef);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_HELLO_SIZE);
	static const uint8_t want[24] = { 24, 0, 0, 0, 0x01, 0x00, 0, 0, 0x44, 0x33, 0x22, 0x11,
					  0, 0, 0, 0, 1, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde };
	assert_memory_equal(m, want, sizeof(want));

	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.length, 24);
	assert_int_equal(h.type, RDP_MSG_HELLO);
	assert_int_equal(h.flags, 0);
	assert_int_equal(h.id, 0x11223344);
	assert_int_equal(h.count, 0);
	uint32_t v, f;
	rdp_hello_get(m, &v, &f);
	assert_int_equal(v, RDP_VERSION);
	assert_int_equal(f, 0xdeadbeef);
	/* A request is not something the daemon sends. */
	assert_int_equal(chk_dmn(m, n, 0), RDP_E_TYPE);
}

static void test_welcome(void **state)
{
	(void)state;
	uint8_t m[64];
	struct rdp_welcome w = { .version = 1, .features = 0x80000001, .max_message = RDP_MSG_MAX,
				 .max_batch = RDP_BATCH_MAX, .max_registrations = 0x01020304,
				 .reserved = 0 };
	size_t n = rdp_encode_welcome(m, sizeof(m), 9, &w);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_WELCOME_SIZE);
	static const uint8_t want[40] = {
		40, 0, 0, 0, 0x01, 0x80, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0,
		1, 0, 0, 0, 0x01, 0, 0, 0x80, 0x00, 0x00, 0x01, 0x00, 253, 0, 0, 0,
		0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0,
	};
	assert_memory_equal(m, want, sizeof(want));

	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_WELCOME);
	assert_int_equal(h.id, 9);
	struct rdp_welcome g;
	memset(&g, 0xff, sizeof(g));
	rdp_welcome_get(m, &g);
	assert_int_equal(g.version, w.version);
	assert_int_equal(g.features, w.features);
	assert_int_equal(g.max_message, w.max_message);
	assert_int_equal(g.max_batch, w.max_batch);
	assert_int_equal(g.max_registrations, w.max_registrations);
	assert_int_equal(g.reserved, 0);
	assert_int_equal(chk_req(m, n, 0), RDP_E_TYPE);
}

static const struct rdp_add_entry three[3] = {
	{ .token = 0x0102030405060708ull, .interest = RDP_INTEREST_READABLE, .flags = 0 },
	{ .token = 0, .interest = RDP_INTEREST_ALL, .flags = RDP_FLAG_ONESHOT },
	{ .token = UINT64_MAX, .interest = RDP_INTEREST_WRITABLE, .flags = RDP_FLAG_ALL },
};

static void check_entries_msg(const uint8_t *m, size_t n, uint16_t type, size_t nfds)
{
	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(m, n, nfds, &h), RDP_E_NONE);
	assert_int_equal(h.type, type);
	assert_int_equal(h.id, 0xcafe);
	assert_int_equal(h.count, 3);
	assert_int_equal(rdp_check_entries(&h, m), RDP_E_NONE);
	for (uint32_t i = 0; i < 3; i++) {
		struct rdp_add_entry e;
		rdp_add_entry_get(m, i, &e);
		assert_true(e.token == three[i].token);
		assert_int_equal(e.interest, three[i].interest);
		assert_int_equal(e.flags, three[i].flags);
	}
}

static void test_add(void **state)
{
	(void)state;
	uint8_t m[128];
	size_t n = rdp_encode_add(m, sizeof(m), 0xcafe, three, 3);
	assert_int_equal(n, RDP_HDR_SIZE + 3 * RDP_ADD_ENTRY_SIZE);
	assert_hdr(m, 64, RDP_MSG_ADD, 0xcafe, 3);
	static const uint8_t e0[16] = { 8, 7, 6, 5, 4, 3, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0 };
	static const uint8_t e1[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0 };
	static const uint8_t e2[16] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					2, 0, 0, 0, 1, 0, 0, 0 };
	assert_memory_equal(m + 16, e0, 16);
	assert_memory_equal(m + 32, e1, 16);
	assert_memory_equal(m + 48, e2, 16);
	check_entries_msg(m, n, RDP_MSG_ADD, 3);
}

static void test_mod(void **state)
{
	(void)state;
	uint8_t m[128];
	size_t n = rdp_encode_mod(m, sizeof(m), 0xcafe, three, 3);
	assert_int_equal(n, 64);
	assert_hdr(m, 64, RDP_MSG_MOD, 0xcafe, 3);
	assert_true(ld64(m + 16) == three[0].token);
	assert_int_equal(ld32(m + 16 + 8), three[0].interest);
	assert_int_equal(ld32(m + 32 + 12), three[1].flags);
	check_entries_msg(m, n, RDP_MSG_MOD, 0);
	/* MOD carries no fds. */
	assert_int_equal(chk_req(m, n, 3), RDP_E_FDS);
}

static void test_del_rearm(void **state)
{
	(void)state;
	static const uint64_t tok[4] = { 0x0102030405060708ull, 0, UINT64_MAX, 0x8000000000000000ull };
	static const uint16_t types[2] = { RDP_MSG_DEL, RDP_MSG_REARM };
	for (int t = 0; t < 2; t++) {
		uint8_t m[128];
		size_t n = rdp_encode_tokens(m, sizeof(m), types[t], 77, tok, 4);
		assert_int_equal(n, RDP_HDR_SIZE + 4 * RDP_TOK_ENTRY_SIZE);
		assert_hdr(m, 48, types[t], 77, 4);
		static const uint8_t t0[8] = { 8, 7, 6, 5, 4, 3, 2, 1 };
		static const uint8_t t1[8] = { 0 };
		static const uint8_t t2[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
		static const uint8_t t3[8] = { 0, 0, 0, 0, 0, 0, 0, 0x80 };
		assert_memory_equal(m + 16, t0, 8);
		assert_memory_equal(m + 24, t1, 8);
		assert_memory_equal(m + 32, t2, 8);
		assert_memory_equal(m + 40, t3, 8);

		struct rdp_hdr h;
		assert_int_equal(rdp_check_request(m, n, 0, &h), RDP_E_NONE);
		assert_int_equal(h.type, types[t]);
		assert_int_equal(h.count, 4);
		assert_int_equal(rdp_check_entries(&h, m), RDP_E_NONE);
		for (uint32_t i = 0; i < 4; i++)
			assert_true(rdp_token_get(m, i) == tok[i]);
		/* DEL and REARM carry no fds. */
		assert_int_equal(chk_req(m, n, 1), RDP_E_FDS);
	}
}

static void test_error(void **state)
{
	(void)state;
	uint8_t m[128];
	size_t n = rdp_encode_error(m, sizeof(m), 5, 22, RDP_E_COUNT, "bad count");
	assert_int_equal(n, RDP_HDR_SIZE + RDP_ERROR_FIXED + 9);
	assert_hdr(m, 33, RDP_MSG_ERROR, 5, 0);
	assert_int_equal(ld32(m + 16), 22);
	assert_int_equal(ld32(m + 20), RDP_E_COUNT);
	assert_memory_equal(m + 24, "bad count", 9);

	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_ERROR);
	uint32_t err, reason;
	const char *text;
	size_t tl;
	rdp_error_get(m, n, &err, &reason, &text, &tl);
	assert_int_equal(err, 22);
	assert_int_equal(reason, RDP_E_COUNT);
	assert_int_equal(tl, 9);
	assert_memory_equal(text, "bad count", 9);

	/* No text: the fixed part alone is a valid ERROR. */
	n = rdp_encode_error(m, sizeof(m), 0, 0, RDP_E_SHORT, NULL);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_ERROR_FIXED);
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	rdp_error_get(m, n, &err, &reason, &text, &tl);
	assert_int_equal(reason, RDP_E_SHORT);
	assert_int_equal(tl, 0);
	assert_int_equal(chk_req(m, n, 0), RDP_E_TYPE);
}

static void test_control_json(void **state)
{
	(void)state;
	static const char req[] = "{\"op\":\"status\"}";
	uint8_t m[128];
	size_t n = rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 3, req, strlen(req));
	assert_int_equal(n, RDP_HDR_SIZE + strlen(req));
	assert_hdr(m, (uint32_t)n, RDP_MSG_CONTROL, 3, 0);
	assert_memory_equal(m + 16, req, strlen(req));
	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_CONTROL);
	assert_int_equal(h.id, 3);
	assert_int_equal(chk_dmn(m, n, 0), RDP_E_TYPE);

	static const char rep[] = "{\"ok\":true}";
	n = rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL_REPLY, 3, rep, strlen(rep));
	assert_int_equal(n, RDP_HDR_SIZE + strlen(rep));
	assert_hdr(m, (uint32_t)n, RDP_MSG_CONTROL_REPLY, 3, 0);
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_CONTROL_REPLY);
	assert_memory_equal(m + 16, rep, strlen(rep));
	assert_int_equal(chk_req(m, n, 0), RDP_E_TYPE);
}

static void test_reply_batch(void **state)
{
	(void)state;
	static uint8_t m[RDP_MSG_MAX];
	rdp_batch_begin(m, RDP_MSG_REPLY, 0x01020304);
	rdp_reply_set(m, 0, 0);
	rdp_reply_set(m, 1, 9 /* EBADF */);
	rdp_reply_set(m, 2, 0xfffffffe);
	size_t n = rdp_batch_finish(m, 3);
	assert_int_equal(n, RDP_HDR_SIZE + 3 * RDP_STATUS_SIZE);
	static const uint8_t want[28] = { 28, 0, 0, 0, 0x02, 0x80, 0, 0, 4, 3, 2, 1, 3, 0, 0, 0,
					  0, 0, 0, 0, 9, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff };
	assert_memory_equal(m, want, sizeof(want));

	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_REPLY);
	assert_int_equal(h.id, 0x01020304);
	assert_int_equal(h.count, 3);
	assert_int_equal(rdp_status_get(m, 0), 0);
	assert_int_equal(rdp_status_get(m, 1), 9);
	assert_int_equal(rdp_status_get(m, 2), 0xfffffffe);

	/* A full batch answers a full request. */
	rdp_batch_begin(m, RDP_MSG_REPLY, 1);
	for (uint32_t i = 0; i < RDP_BATCH_MAX; i++)
		rdp_reply_set(m, i, i);
	n = rdp_batch_finish(m, RDP_BATCH_MAX);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_BATCH_MAX * RDP_STATUS_SIZE);
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.count, RDP_BATCH_MAX);
	assert_int_equal(rdp_status_get(m, RDP_BATCH_MAX - 1), RDP_BATCH_MAX - 1);
}

static void test_events_batch(void **state)
{
	(void)state;
	static uint8_t m[RDP_MSG_MAX];
	rdp_batch_begin(m, RDP_MSG_EVENTS, 0);
	struct rdp_event ev = { .token = 0x1122334455667788ull, .tick = 0xa0b0c0d0,
				.ready = RDP_READY_READABLE | RDP_READY_ERROR };
	rdp_event_set(m, 0, &ev);
	size_t n = rdp_batch_finish(m, 1);
	assert_int_equal(n, 32);
	static const uint8_t want[32] = { 32, 0, 0, 0, 0x03, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
					  0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
					  0xd0, 0xc0, 0xb0, 0xa0, 0x21, 0, 0, 0 };
	assert_memory_equal(m, want, sizeof(want));

	/* The largest EVENTS packet fills a message exactly. */
	rdp_batch_begin(m, RDP_MSG_EVENTS, 0);
	for (uint32_t i = 0; i < RDP_EVENTS_MAX; i++) {
		struct rdp_event e = { .token = (uint64_t)i << 40 | i, .tick = i * 3,
				       .ready = i & RDP_READY_ALL };
		rdp_event_set(m, i, &e);
	}
	n = rdp_batch_finish(m, RDP_EVENTS_MAX);
	assert_int_equal(n, RDP_MSG_MAX);
	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_EVENTS);
	assert_int_equal(h.id, 0);
	assert_int_equal(h.count, RDP_EVENTS_MAX);
	for (uint32_t i = 0; i < RDP_EVENTS_MAX; i += 97) {
		struct rdp_event g;
		rdp_event_get(m, i, &g);
		assert_true(g.token == ((uint64_t)i << 40 | i));
		assert_int_equal(g.tick, i * 3);
		assert_int_equal(g.ready, i & RDP_READY_ALL);
	}
	struct rdp_event last;
	rdp_event_get(m, RDP_EVENTS_MAX - 1, &last);
	assert_int_equal(last.tick, (RDP_EVENTS_MAX - 1) * 3);
	/* EVENTS goes to clients only. */
	assert_int_equal(chk_req(m, n, 0), RDP_E_TYPE);
}

/* A full ADD: 253 entries, 253 fds. */
static void test_add_full_batch(void **state)
{
	(void)state;
	static struct rdp_add_entry e[RDP_BATCH_MAX + 1];
	static uint8_t m[RDP_MSG_MAX];
	for (uint32_t i = 0; i <= RDP_BATCH_MAX; i++)
		e[i] = (struct rdp_add_entry){ .token = 1000 + i, .interest = RDP_INTEREST_READABLE };
	size_t n = rdp_encode_add(m, sizeof(m), 1, e, RDP_BATCH_MAX);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_BATCH_MAX * RDP_ADD_ENTRY_SIZE);
	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(m, n, RDP_BATCH_MAX, &h), RDP_E_NONE);
	assert_int_equal(h.count, RDP_BATCH_MAX);
	struct rdp_add_entry g;
	rdp_add_entry_get(m, RDP_BATCH_MAX - 1, &g);
	assert_true(g.token == 1000 + RDP_BATCH_MAX - 1);

	uint64_t tok[RDP_BATCH_MAX];
	for (uint32_t i = 0; i < RDP_BATCH_MAX; i++)
		tok[i] = i;
	n = rdp_encode_tokens(m, sizeof(m), RDP_MSG_REARM, 1, tok, RDP_BATCH_MAX);
	assert_int_equal(n, RDP_HDR_SIZE + RDP_BATCH_MAX * RDP_TOK_ENTRY_SIZE);
	assert_int_equal(chk_req(m, n, 0), RDP_E_NONE);
}

/* ---- encoders refuse what does not fit ---- */

/* Each encoder fits exactly in its size, returns 0 one byte short and writes nothing past
 * the capacity it was given. */
static void test_encoders_refuse_small_buffers(void **state)
{
	(void)state;
	static uint8_t m[RDP_MSG_MAX + 16];
	struct rdp_welcome w = { .version = 1 };
	uint64_t tok[3] = { 1, 2, 3 };
	static const char json[] = "{}";
	for (int which = 0; which < 7; which++) {
		for (size_t cap = 0; cap <= 80; cap++) {
			memset(m, 0xaa, 128);
			size_t need, n;
			switch (which) {
			case 0:
				need = 24;
				n = rdp_encode_hello(m, cap, 1, 1, 0);
				break;
			case 1:
				need = 40;
				n = rdp_encode_welcome(m, cap, 1, &w);
				break;
			case 2:
				need = 64;
				n = rdp_encode_add(m, cap, 1, three, 3);
				break;
			case 3:
				need = 64;
				n = rdp_encode_mod(m, cap, 1, three, 3);
				break;
			case 4:
				need = 40;
				n = rdp_encode_tokens(m, cap, RDP_MSG_DEL, 1, tok, 3);
				break;
			case 5:
				need = 29;
				n = rdp_encode_error(m, cap, 1, 1, RDP_E_TYPE, "abcde");
				break;
			default:
				need = 18;
				n = rdp_encode_json(m, cap, RDP_MSG_CONTROL, 1, json, 2);
				break;
			}
			if (cap < need) {
				assert_int_equal(n, 0);
			} else {
				assert_int_equal(n, need);
			}
			for (size_t i = cap; i < 128; i++)
				assert_int_equal(m[i], 0xaa);
		}
	}

	/* Bodies over the message limit are refused whatever the capacity. */
	static char big[RDP_MSG_MAX];
	memset(big, 'x', sizeof(big));
	big[RDP_MSG_MAX - RDP_HDR_SIZE - RDP_ERROR_FIXED] = '\0';
	assert_int_equal(rdp_encode_error(m, sizeof(m), 1, 1, 1, big), RDP_MSG_MAX);
	big[RDP_MSG_MAX - RDP_HDR_SIZE - RDP_ERROR_FIXED] = 'x';
	big[RDP_MSG_MAX - RDP_HDR_SIZE - RDP_ERROR_FIXED + 1] = '\0';
	assert_int_equal(rdp_encode_error(m, sizeof(m), 1, 1, 1, big), 0);
	assert_int_equal(rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 1, big,
					 RDP_MSG_MAX - RDP_HDR_SIZE),
			 RDP_MSG_MAX);
	assert_int_equal(rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 1, big,
					 RDP_MSG_MAX - RDP_HDR_SIZE + 1),
			 0);
	assert_int_equal(rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 1, big, SIZE_MAX), 0);
}

static void test_encoders_refuse_big_batches(void **state)
{
	(void)state;
	static struct rdp_add_entry e[RDP_BATCH_MAX + 1];
	static uint64_t tok[RDP_BATCH_MAX + 1];
	static uint8_t m[2 * RDP_MSG_MAX];
	assert_int_equal(rdp_encode_add(m, sizeof(m), 1, e, RDP_BATCH_MAX + 1), 0);
	assert_int_equal(rdp_encode_mod(m, sizeof(m), 1, e, RDP_BATCH_MAX + 1), 0);
	assert_int_equal(rdp_encode_tokens(m, sizeof(m), RDP_MSG_DEL, 1, tok, RDP_BATCH_MAX + 1), 0);
	assert_int_equal(rdp_encode_tokens(m, sizeof(m), RDP_MSG_REARM, 1, tok, RDP_BATCH_MAX + 1),
			 0);
	/* Counts whose byte size wraps 32 bits must not slip through. */
	assert_int_equal(rdp_encode_add(m, sizeof(m), 1, e, 0x10000000), 0);
	assert_int_equal(rdp_encode_tokens(m, sizeof(m), RDP_MSG_DEL, 1, tok, 0x20000000), 0);
	assert_int_equal(rdp_encode_add(m, sizeof(m), 1, e, UINT32_MAX), 0);
}

/* ---- hostile frames ---- */

static void test_short_and_long(void **state)
{
	(void)state;
	mkframe(RDP_MSG_HELLO, 0, RDP_HELLO_SIZE);
	for (size_t len = 0; len < RDP_HDR_SIZE; len++) {
		assert_int_equal(chk_req(frame, len, 0), RDP_E_SHORT);
		assert_int_equal(chk_dmn(frame, len, 0), RDP_E_SHORT);
	}
	/* Over the maximum, whatever the header claims. */
	size_t n = mkframe(RDP_MSG_CONTROL, 0, RDP_MSG_MAX + 1 - RDP_HDR_SIZE);
	assert_int_equal(n, RDP_MSG_MAX + 1);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_TOO_BIG);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_TOO_BIG);
	assert_int_equal(chk_req(frame, SIZE_MAX, 0), RDP_E_TOO_BIG);
	/* The largest message is fine. */
	n = mkframe(RDP_MSG_CONTROL, 0, RDP_MSG_MAX - RDP_HDR_SIZE);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_NONE);
}

static void test_length_mismatch(void **state)
{
	(void)state;
	static const uint32_t lies[] = { 0, 15, 16, 23, 25, 0x10018, 0x7fffffff, 0xfffffff0,
					 UINT32_MAX - 15, UINT32_MAX - 1, UINT32_MAX };
	size_t n = mkframe(RDP_MSG_HELLO, 0, RDP_HELLO_SIZE);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_NONE);
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		st32(frame, lies[i]);
		assert_int_equal(chk_req(frame, n, 0), RDP_E_LENGTH);
	}
	/* Received more or fewer bytes than the header says. */
	n = mkframe(RDP_MSG_HELLO, 0, RDP_HELLO_SIZE);
	assert_int_equal(chk_req(frame, n - 1, 0), RDP_E_LENGTH);
	assert_int_equal(chk_req(frame, n + 1, 0), RDP_E_LENGTH);
	n = mkframe(RDP_MSG_REPLY, 1, RDP_STATUS_SIZE);
	st32(frame, UINT32_MAX);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_LENGTH);
}

static void test_reserved_header_flags(void **state)
{
	(void)state;
	static const uint16_t flags[] = { 1, 2, 0x100, 0x8000, 0xffff };
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		size_t n = mkframe(RDP_MSG_HELLO, 0, RDP_HELLO_SIZE);
		st16(frame + 6, flags[i]);
		assert_int_equal(chk_req(frame, n, 0), RDP_E_HDR_FLAGS);
		n = mkframe(RDP_MSG_WELCOME, 0, RDP_WELCOME_SIZE);
		st16(frame + 6, flags[i]);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_HDR_FLAGS);
	}
}

static void test_unknown_and_wrong_side_types(void **state)
{
	(void)state;
	static const uint16_t unknown[] = { 0, 9, 10, 0x00ff, 0x7fff, 0x8000, 0x8007, 0xfffe, 0xffff };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		size_t n = mkframe(unknown[i], 0, RDP_HELLO_SIZE);
		assert_int_equal(chk_req(frame, n, 0), RDP_E_TYPE);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_TYPE);
	}
	/* Well-formed daemon messages sent as requests, and requests sent by a "daemon". */
	struct { uint16_t type; uint32_t count; size_t body; } daemon_only[] = {
		{ RDP_MSG_WELCOME, 0, RDP_WELCOME_SIZE },
		{ RDP_MSG_REPLY, 1, RDP_STATUS_SIZE },
		{ RDP_MSG_EVENTS, 1, RDP_EVENT_SIZE },
		{ RDP_MSG_ERROR, 0, RDP_ERROR_FIXED },
		{ RDP_MSG_CONTROL_REPLY, 0, 2 },
	}, request_only[] = {
		{ RDP_MSG_HELLO, 0, RDP_HELLO_SIZE },
		{ RDP_MSG_ADD, 1, RDP_ADD_ENTRY_SIZE },
		{ RDP_MSG_MOD, 1, RDP_MOD_ENTRY_SIZE },
		{ RDP_MSG_DEL, 1, RDP_TOK_ENTRY_SIZE },
		{ RDP_MSG_REARM, 1, RDP_TOK_ENTRY_SIZE },
		{ RDP_MSG_CONTROL, 0, 2 },
	};
	for (size_t i = 0; i < 5; i++) {
		size_t n = mkframe(daemon_only[i].type, daemon_only[i].count, daemon_only[i].body);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_NONE);
		assert_int_equal(chk_req(frame, n, 0), RDP_E_TYPE);
	}
	for (size_t i = 0; i < 6; i++) {
		size_t n = mkframe(request_only[i].type, request_only[i].count, request_only[i].body);
		size_t nfds = request_only[i].type == RDP_MSG_ADD ? 1 : 0;
		assert_int_equal(chk_req(frame, n, nfds), RDP_E_NONE);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_TYPE);
	}
}

/* Counts chosen so that count * entry_size wraps in 32 bits, or is huge, or is one over the
 * limit: each must be refused before anything trusts it. */
static void test_hostile_counts(void **state)
{
	(void)state;
	struct { uint16_t type; uint32_t entry; bool req; bool fds; } t[] = {
		{ RDP_MSG_ADD, RDP_ADD_ENTRY_SIZE, true, true },
		{ RDP_MSG_MOD, RDP_MOD_ENTRY_SIZE, true, false },
		{ RDP_MSG_DEL, RDP_TOK_ENTRY_SIZE, true, false },
		{ RDP_MSG_REARM, RDP_TOK_ENTRY_SIZE, true, false },
		{ RDP_MSG_REPLY, RDP_STATUS_SIZE, false, false },
		{ RDP_MSG_EVENTS, RDP_EVENT_SIZE, false, false },
	};
	static const uint32_t huge[] = { UINT32_MAX, UINT32_MAX - 1, 0x80000000, 0x40000000,
					 0x20000000, 0x10000000, 0x10000001, 4096 };
	for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
		uint32_t (*chk)(const void *, size_t, size_t) = t[k].req ? chk_req : chk_dmn;
		for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
			/* With an empty body, one entry, and a body of count*entry mod 2^32. */
			uint32_t wrapped = (uint32_t)(huge[i] * t[k].entry);
			size_t bodies[] = { 0, t[k].entry, wrapped <= 4096 ? wrapped : 64 };
			for (size_t b = 0; b < 3; b++) {
				size_t n = mkframe(t[k].type, huge[i], bodies[b]);
				size_t nfds = t[k].fds ? RDP_FDS_MAX : 0;
				assert_int_equal(chk(frame, n, nfds), RDP_E_BATCH);
			}
		}
		/* Count zero: an empty batch is not a message. */
		size_t n = mkframe(t[k].type, 0, 0);
		assert_int_equal(chk(frame, n, 0), RDP_E_COUNT);
		n = mkframe(t[k].type, 0, t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? 1 : 0), RDP_E_COUNT);
		/* Count disagrees with the body. */
		n = mkframe(t[k].type, 2, 3 * t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? 2 : 0), RDP_E_COUNT);
		n = mkframe(t[k].type, 3, 2 * t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? 3 : 0), RDP_E_COUNT);
		n = mkframe(t[k].type, 1, t[k].entry + 1);
		assert_int_equal(chk(frame, n, t[k].fds ? 1 : 0), RDP_E_COUNT);
		n = mkframe(t[k].type, 1, t[k].entry - 1);
		assert_int_equal(chk(frame, n, t[k].fds ? 1 : 0), RDP_E_COUNT);
	}

	/* 253 is the batch limit for requests and REPLY; 254 is over it. */
	for (size_t k = 0; k < 5; k++) {
		uint32_t (*chk)(const void *, size_t, size_t) = t[k].req ? chk_req : chk_dmn;
		size_t n = mkframe(t[k].type, RDP_BATCH_MAX, RDP_BATCH_MAX * t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? RDP_BATCH_MAX : 0), RDP_E_NONE);
		n = mkframe(t[k].type, RDP_BATCH_MAX, (RDP_BATCH_MAX - 1) * t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? RDP_BATCH_MAX : 0), RDP_E_COUNT);
		n = mkframe(t[k].type, RDP_BATCH_MAX + 1, (RDP_BATCH_MAX + 1) * t[k].entry);
		assert_int_equal(chk(frame, n, t[k].fds ? RDP_BATCH_MAX + 1 : 0), RDP_E_BATCH);
	}
	/* EVENTS may hold up to 4095 records; a count of 4096 is over the limit even when
	 * the length is a lie. */
	size_t n = mkframe(RDP_MSG_EVENTS, RDP_BATCH_MAX + 1, (RDP_BATCH_MAX + 1) * RDP_EVENT_SIZE);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_NONE);
	n = mkframe(RDP_MSG_EVENTS, RDP_EVENTS_MAX + 1, RDP_EVENT_SIZE);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_BATCH);

	/* Messages without entries must say count 0. */
	struct { uint16_t type; size_t body; bool req; } f[] = {
		{ RDP_MSG_HELLO, RDP_HELLO_SIZE, true },
		{ RDP_MSG_CONTROL, 2, true },
		{ RDP_MSG_WELCOME, RDP_WELCOME_SIZE, false },
		{ RDP_MSG_ERROR, RDP_ERROR_FIXED, false },
		{ RDP_MSG_CONTROL_REPLY, 2, false },
	};
	for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++) {
		uint32_t (*chk)(const void *, size_t, size_t) = f[k].req ? chk_req : chk_dmn;
		static const uint32_t counts[] = { 1, 2, 253, 0x10000000, UINT32_MAX };
		for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
			n = mkframe(f[k].type, counts[i], f[k].body);
			assert_int_equal(chk(frame, n, 0), RDP_E_COUNT);
		}
	}
}

static void test_fixed_bodies(void **state)
{
	(void)state;
	static const size_t hello_bad[] = { 0, 4, 7, 9, 16, 100 };
	for (size_t i = 0; i < sizeof(hello_bad) / sizeof(hello_bad[0]); i++) {
		size_t n = mkframe(RDP_MSG_HELLO, 0, hello_bad[i]);
		assert_int_equal(chk_req(frame, n, 0), RDP_E_BODY);
	}
	static const size_t welcome_bad[] = { 0, 8, 23, 25, 48 };
	for (size_t i = 0; i < sizeof(welcome_bad) / sizeof(welcome_bad[0]); i++) {
		size_t n = mkframe(RDP_MSG_WELCOME, 0, welcome_bad[i]);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_BODY);
	}
	/* ERROR needs its errno and reason; the text may be empty. */
	for (size_t body = 0; body < RDP_ERROR_FIXED; body++) {
		size_t n = mkframe(RDP_MSG_ERROR, 0, body);
		assert_int_equal(chk_dmn(frame, n, 0), RDP_E_BODY);
	}
	size_t n = mkframe(RDP_MSG_ERROR, 0, RDP_ERROR_FIXED);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_NONE);
	/* JSON messages need a body. */
	n = mkframe(RDP_MSG_CONTROL, 0, 0);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_BODY);
	n = mkframe(RDP_MSG_CONTROL_REPLY, 0, 0);
	assert_int_equal(chk_dmn(frame, n, 0), RDP_E_BODY);
	n = mkframe(RDP_MSG_CONTROL, 0, 1);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_NONE);
}

static void test_fd_counts(void **state)
{
	(void)state;
	/* ADD takes exactly one fd per entry. */
	size_t n = mkframe(RDP_MSG_ADD, 3, 3 * RDP_ADD_ENTRY_SIZE);
	assert_int_equal(chk_req(frame, n, 3), RDP_E_NONE);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_FDS);
	assert_int_equal(chk_req(frame, n, 2), RDP_E_FDS);
	assert_int_equal(chk_req(frame, n, 4), RDP_E_FDS);
	assert_int_equal(chk_req(frame, n, RDP_FDS_MAX), RDP_E_FDS);
	assert_int_equal(chk_req(frame, n, SIZE_MAX), RDP_E_FDS);
	n = mkframe(RDP_MSG_ADD, 1, RDP_ADD_ENTRY_SIZE);
	assert_int_equal(chk_req(frame, n, 0), RDP_E_FDS);
	assert_int_equal(chk_req(frame, n, 2), RDP_E_FDS);

	/* Everything else takes none. */
	struct { uint16_t type; uint32_t count; size_t body; bool req; } none[] = {
		{ RDP_MSG_HELLO, 0, RDP_HELLO_SIZE, true },
		{ RDP_MSG_MOD, 1, RDP_MOD_ENTRY_SIZE, true },
		{ RDP_MSG_DEL, 1, RDP_TOK_ENTRY_SIZE, true },
		{ RDP_MSG_REARM, 2, 2 * RDP_TOK_ENTRY_SIZE, true },
		{ RDP_MSG_CONTROL, 0, 2, true },
		{ RDP_MSG_WELCOME, 0, RDP_WELCOME_SIZE, false },
		{ RDP_MSG_REPLY, 1, RDP_STATUS_SIZE, false },
		{ RDP_MSG_EVENTS, 1, RDP_EVENT_SIZE, false },
		{ RDP_MSG_ERROR, 0, RDP_ERROR_FIXED, false },
		{ RDP_MSG_CONTROL_REPLY, 0, 2, false },
	};
	for (size_t k = 0; k < sizeof(none) / sizeof(none[0]); k++) {
		uint32_t (*chk)(const void *, size_t, size_t) = none[k].req ? chk_req : chk_dmn;
		n = mkframe(none[k].type, none[k].count, none[k].body);
		assert_int_equal(chk(frame, n, 0), RDP_E_NONE);
		assert_int_equal(chk(frame, n, 1), RDP_E_FDS);
		assert_int_equal(chk(frame, n, none[k].count + 1), RDP_E_FDS);
		assert_int_equal(chk(frame, n, RDP_FDS_MAX), RDP_E_FDS);
	}
}

static void test_entry_reserved_bits(void **state)
{
	(void)state;
	static uint8_t m[RDP_MSG_MAX];
	static struct rdp_add_entry e[RDP_BATCH_MAX];
	for (uint32_t i = 0; i < RDP_BATCH_MAX; i++)
		e[i] = (struct rdp_add_entry){ .token = i, .interest = i % 8, .flags = i % 2 };
	static const uint16_t types[2] = { RDP_MSG_ADD, RDP_MSG_MOD };
	for (int t = 0; t < 2; t++) {
		size_t n = types[t] == RDP_MSG_ADD
				   ? rdp_encode_add(m, sizeof(m), 1, e, RDP_BATCH_MAX)
				   : rdp_encode_mod(m, sizeof(m), 1, e, RDP_BATCH_MAX);
		size_t nfds = types[t] == RDP_MSG_ADD ? RDP_BATCH_MAX : 0;
		struct rdp_hdr h;
		assert_int_equal(rdp_check_request(m, n, nfds, &h), RDP_E_NONE);
		assert_int_equal(rdp_check_entries(&h, m), RDP_E_NONE);

		/* A reserved bit in any entry, first, middle or last, is refused. */
		static const uint32_t bad_interest[] = { 0x8, 0x10, 0x100, 0x80000000, UINT32_MAX };
		static const uint32_t bad_flags[] = { 0x2, 0x4, 0x80000000, UINT32_MAX };
		static const uint32_t where[] = { 0, 100, RDP_BATCH_MAX - 1 };
		for (size_t w = 0; w < 3; w++) {
			uint8_t *p = m + RDP_HDR_SIZE + where[w] * RDP_ADD_ENTRY_SIZE;
			uint8_t save[16];
			memcpy(save, p, 16);
			for (size_t i = 0; i < sizeof(bad_interest) / sizeof(bad_interest[0]); i++) {
				st32(p + 8, bad_interest[i]);
				assert_int_equal(rdp_check_request(m, n, nfds, &h), RDP_E_NONE);
				assert_int_equal(rdp_check_entries(&h, m), RDP_E_ENTRY);
			}
			memcpy(p, save, 16);
			for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++) {
				st32(p + 12, bad_flags[i]);
				assert_int_equal(rdp_check_entries(&h, m), RDP_E_ENTRY);
			}
			memcpy(p, save, 16);
			/* Any token is fine. */
			st64(p, UINT64_MAX);
			assert_int_equal(rdp_check_entries(&h, m), RDP_E_NONE);
			memcpy(p, save, 16);
		}
	}
	/* DEL and REARM have no interest or flags: all-ones tokens are just tokens. */
	uint64_t tok[2] = { UINT64_MAX, UINT64_MAX };
	size_t n = rdp_encode_tokens(m, sizeof(m), RDP_MSG_DEL, 1, tok, 2);
	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(m, n, 0, &h), RDP_E_NONE);
	assert_int_equal(rdp_check_entries(&h, m), RDP_E_NONE);
}

static void test_reason_str(void **state)
{
	(void)state;
	const char *s[RDP_E_REASON_MAX];
	for (uint32_t r = 0; r < RDP_E_REASON_MAX; r++) {
		s[r] = rdp_reason_str(r);
		assert_non_null(s[r]);
		assert_true(strlen(s[r]) > 0);
		for (uint32_t q = 0; q < r; q++)
			assert_string_not_equal(s[q], s[r]);
	}
	static const uint32_t out[] = { RDP_E_REASON_MAX, RDP_E_REASON_MAX + 1, 0x7fffffff,
					UINT32_MAX };
	const char *u = rdp_reason_str(RDP_E_REASON_MAX);
	assert_non_null(u);
	assert_true(strlen(u) > 0);
	for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
		const char *x = rdp_reason_str(out[i]);
		assert_non_null(x);
		assert_string_equal(x, u);
		for (uint32_t r = 0; r < RDP_E_REASON_MAX; r++)
			assert_string_not_equal(x, s[r]);
	}
}

/* ---- socket paths ---- */

static const char *const path_vars[3] = { "READYD_SOCKET", "RUNTIME_DIRECTORY",
					  "XDG_RUNTIME_DIR" };
static char *saved_env[3];

static int env_setup(void **state)
{
	for (int i = 0; i < 3; i++) {
		const char *v = getenv(path_vars[i]);
		saved_env[i] = v ? strdup(v) : NULL;
		unsetenv(path_vars[i]);
	}
	return rdt_fd_setup(state);
}

static int env_teardown(void **state)
{
	for (int i = 0; i < 3; i++) {
		if (saved_env[i])
			setenv(path_vars[i], saved_env[i], 1);
		else
			unsetenv(path_vars[i]);
		free(saved_env[i]);
		saved_env[i] = NULL;
	}
	return rdt_fd_teardown(state);
}

static void assert_path(const char *want)
{
	char buf[256];
	memset(buf, 'z', sizeof(buf));
	int n = rdp_default_socket_path(buf, sizeof(buf));
	assert_int_equal(n, (int)strlen(want));
	assert_string_equal(buf, want);
}

static void test_path_precedence(void **state)
{
	(void)state;
	assert_path(RDP_SOCKET_FALLBACK);
	assert_string_equal(RDP_SOCKET_FALLBACK, "/run/readyd/readyd.sock");

	setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
	assert_path("/run/user/1000/readyd.sock");

	setenv("RUNTIME_DIRECTORY", "/run/readyd-unit", 1);
	assert_path("/run/readyd-unit/readyd.sock");
	setenv("RUNTIME_DIRECTORY", "/run/first:/run/second:/run/third", 1);
	assert_path("/run/first/readyd.sock");

	setenv("READYD_SOCKET", "/tmp/x/my.sock", 1);
	assert_path("/tmp/x/my.sock");
	/* READYD_SOCKET is taken as it is, colons included. */
	setenv("READYD_SOCKET", "/tmp/a:b", 1);
	assert_path("/tmp/a:b");

	/* Empty variables count as unset, at every level. */
	setenv("READYD_SOCKET", "", 1);
	assert_path("/run/first/readyd.sock");
	setenv("RUNTIME_DIRECTORY", "", 1);
	assert_path("/run/user/1000/readyd.sock");
	setenv("XDG_RUNTIME_DIR", "", 1);
	assert_path(RDP_SOCKET_FALLBACK);

	/* Each level wins over the ones below even when those are empty. */
	unsetenv("READYD_SOCKET");
	unsetenv("RUNTIME_DIRECTORY");
	setenv("XDG_RUNTIME_DIR", "/x", 1);
	assert_path("/x/readyd.sock");
	unsetenv("XDG_RUNTIME_DIR");
	setenv("RUNTIME_DIRECTORY", "/r", 1);
	assert_path("/r/readyd.sock");
}

static void test_path_too_long(void **state)
{
	(void)state;
	struct sockaddr_un sa;
	const size_t max = sizeof(sa.sun_path) - 1; /* 107: room for the NUL */
	char v[512];
	char buf[512];

	/* READYD_SOCKET: 107 bytes fit, 108 do not. */
	memset(v, 'a', sizeof(v));
	v[0] = '/';
	v[max] = '\0';
	setenv("READYD_SOCKET", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), (int)max);
	assert_string_equal(buf, v);
	v[max] = 'a';
	v[max + 1] = '\0';
	setenv("READYD_SOCKET", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
	v[300] = '\0';
	setenv("READYD_SOCKET", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
	unsetenv("READYD_SOCKET");

	/* A directory plus "/readyd.sock" (12 bytes). */
	const size_t suffix = strlen("/" RDP_SOCKET_NAME);
	memset(v, 'd', sizeof(v));
	v[0] = '/';
	v[max - suffix] = '\0';
	setenv("XDG_RUNTIME_DIR", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), (int)max);
	v[max - suffix] = 'd';
	v[max - suffix + 1] = '\0';
	setenv("XDG_RUNTIME_DIR", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
	unsetenv("XDG_RUNTIME_DIR");

	/* Only the first RUNTIME_DIRECTORY entry counts toward the length. */
	v[max - suffix] = ':';
	memset(v + max - suffix + 1, 'e', 200);
	v[max - suffix + 201] = '\0';
	setenv("RUNTIME_DIRECTORY", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), (int)max);
	assert_int_equal(buf[max - suffix], '/');
	v[max - suffix] = 'd';
	setenv("RUNTIME_DIRECTORY", v, 1);
	assert_int_equal(rdp_default_socket_path(buf, sizeof(buf)), -ENAMETOOLONG);
	unsetenv("RUNTIME_DIRECTORY");

	/* The caller's buffer is a limit too; the fallback is 23 bytes. */
	const int fl = (int)strlen(RDP_SOCKET_FALLBACK);
	assert_int_equal(rdp_default_socket_path(buf, (size_t)fl + 1), fl);
	assert_string_equal(buf, RDP_SOCKET_FALLBACK);
	assert_int_equal(rdp_default_socket_path(buf, (size_t)fl), -ENAMETOOLONG);
	assert_int_equal(rdp_default_socket_path(buf, 1), -ENAMETOOLONG);
}

static void test_sockaddr(void **state)
{
	(void)state;
	struct sockaddr_un sa;
	memset(&sa, 0x55, sizeof(sa));
	int n = rdp_sockaddr(&sa, "/tmp/s");
	assert_int_equal(n, (int)(offsetof(struct sockaddr_un, sun_path) + 7));
	assert_int_equal(sa.sun_family, AF_UNIX);
	assert_string_equal(sa.sun_path, "/tmp/s");

	char p[200];
	memset(p, 'p', sizeof(p));
	p[0] = '/';
	p[sizeof(sa.sun_path) - 1] = '\0';
	n = rdp_sockaddr(&sa, p);
	assert_int_equal(n, (int)sizeof(struct sockaddr_un));
	assert_string_equal(sa.sun_path, p);
	p[sizeof(sa.sun_path) - 1] = 'p';
	p[sizeof(sa.sun_path)] = '\0';
	assert_int_equal(rdp_sockaddr(&sa, p), -ENAMETOOLONG);
	assert_int_equal(rdp_sockaddr(&sa, ""), -ENAMETOOLONG);

	/* The length it returns is accepted by bind and connect. */
	char dir[] = "/tmp/rdp-test-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[64];
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	n = rdp_sockaddr(&sa, path);
	assert_true(n > 0);
	int srv = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int cli = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(srv >= 0 && cli >= 0);
	assert_int_equal(bind(srv, (struct sockaddr *)&sa, (socklen_t)n), 0);
	assert_int_equal(listen(srv, 1), 0);
	assert_int_equal(connect(cli, (struct sockaddr *)&sa, (socklen_t)n), 0);
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	assert_int_equal(getsockname(srv, (struct sockaddr *)&got, &gl), 0);
	assert_string_equal(got.sun_path, path);
	close(cli);
	close(srv);
	unlink(path);
	rmdir(dir);
}

/* ---- transport: rdp_send / rdp_recv ---- */

static void seqpair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static void assert_same_file(int a, int b)
{
	struct stat sa, sb;
	assert_int_equal(fstat(a, &sa), 0);
	assert_int_equal(fstat(b, &sb), 0);
	assert_true(sa.st_dev == sb.st_dev);
	assert_true(sa.st_ino == sb.st_ino);
}

static void assert_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	assert_true(fl >= 0);
	assert_true(fl & FD_CLOEXEC);
}

static void assert_closed(int fd)
{
	errno = 0;
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
}

/* An ADD with its fds crosses the socket intact: same bytes, fds that name the same files,
 * close-on-exec, and the received message passes the daemon's check. */
static void test_send_recv_fds(void **state)
{
	(void)state;
	int sv[2], pp[2];
	seqpair(sv);
	assert_int_equal(pipe(pp), 0); /* not close-on-exec: the flag must come from recv */
	int nul = open("/dev/null", O_RDONLY);
	assert_true(nul >= 0);
	int fds[3] = { pp[0], pp[1], nul };

	uint8_t m[128];
	size_t n = rdp_encode_add(m, sizeof(m), 42, three, 3);
	assert_int_equal(rdp_send(sv[0], m, n, fds, 3, false), 0);

	uint8_t in[RDP_MSG_MAX];
	struct rdp_rx rx;
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, n);
	assert_false(rx.truncated);
	assert_false(rx.ctruncated);
	assert_int_equal(rx.nfds, 3);
	assert_memory_equal(in, m, n);
	for (int i = 0; i < 3; i++) {
		assert_true(rx.fds[i] >= 0);
		for (int j = 0; j < 3; j++)
			assert_int_not_equal(rx.fds[i], fds[j]);
		assert_cloexec(rx.fds[i]);
		assert_same_file(rx.fds[i], fds[i]);
	}
	struct rdp_hdr h;
	assert_int_equal(rdp_check_request(in, rx.len, rx.nfds, &h), RDP_E_NONE);

	/* Writing to the received write end reaches the original read end. */
	assert_int_equal(write(rx.fds[1], "k", 1), 1);
	char c = 0;
	assert_int_equal(read(pp[0], &c, 1), 1);
	assert_int_equal(c, 'k');

	int got[3] = { rx.fds[0], rx.fds[1], rx.fds[2] };
	rdp_rx_close_fds(&rx);
	assert_int_equal(rx.nfds, 0);
	for (int i = 0; i < 3; i++)
		assert_closed(got[i]);
	close(nul);
	close(pp[0]);
	close(pp[1]);
	close(sv[0]);
	close(sv[1]);
}

/* The client's receive: no control buffer, truncation still reported with the real
 * length, and an fd sent anyway closed by the kernel rather than left anywhere. */
static void test_recv_nofds(void **state)
{
	(void)state;
	int sv[2], pp[2];
	seqpair(sv);
	assert_int_equal(pipe(pp), 0);
	uint8_t in[64], big[40];
	struct rdp_rx rx;

	assert_int_equal(rdp_recv_nofds(sv[1], in, sizeof(in), &rx, true), -EAGAIN);

	assert_int_equal(rdp_send(sv[0], "hello", 5, NULL, 0, false), 0);
	assert_int_equal(rdp_recv_nofds(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, 5);
	assert_false(rx.truncated);
	assert_int_equal(rx.nfds, 0);
	assert_memory_equal(in, "hello", 5);

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)i;
	assert_int_equal(rdp_send(sv[0], big, sizeof(big), NULL, 0, false), 0);
	assert_int_equal(rdp_recv_nofds(sv[1], in, 16, &rx, false), 1);
	assert_true(rx.truncated);
	assert_int_equal(rx.len, sizeof(big)); /* the packet's real length */
	assert_memory_equal(in, big, 16);

	/* The write end travels and is dropped on arrival: once ours is closed, no copy is
	 * left anywhere, so the read end sees end of file. */
	assert_int_equal(rdp_send(sv[0], "fds", 3, &pp[1], 1, false), 0);
	assert_int_equal(rdp_recv_nofds(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, 3);
	assert_int_equal(rx.nfds, 0);
	close(pp[1]);
	char c;
	assert_int_equal(read(pp[0], &c, 1), 0);

	close(sv[0]);
	assert_int_equal(rdp_recv_nofds(sv[1], in, sizeof(in), &rx, false), 0);
	close(sv[1]);
	close(pp[0]);
}

static void test_send_recv_max_fds(void **state)
{
	(void)state;
	int sv[2];
	seqpair(sv);
	int nul = open("/dev/null", O_RDONLY);
	assert_true(nul >= 0);
	int fds[RDP_FDS_MAX + 1];
	for (int i = 0; i <= RDP_FDS_MAX; i++)
		fds[i] = nul;

	/* More than the kernel carries is refused before anything is sent. */
	assert_int_equal(rdp_send(sv[0], "x", 1, fds, RDP_FDS_MAX + 1, true), -EINVAL);
	struct rdp_rx rx;
	uint8_t in[64];
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, true), -EAGAIN);

	assert_int_equal(rdp_send(sv[0], "x", 1, fds, RDP_FDS_MAX, true), 0);
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, 1);
	assert_int_equal(rx.nfds, RDP_FDS_MAX);
	assert_false(rx.ctruncated);
	for (size_t i = 0; i < rx.nfds; i++) {
		assert_cloexec(rx.fds[i]);
		assert_same_file(rx.fds[i], nul);
	}
	rdp_rx_close_fds(&rx);
	assert_int_equal(rx.nfds, 0);
	close(nul);
	close(sv[0]);
	close(sv[1]);
}

/* A message larger than the buffer: its real size is reported, the prefix is delivered,
 * and the fds it carried still reach the caller (to be closed, not leaked). */
static void test_recv_truncated(void **state)
{
	(void)state;
	int sv[2];
	seqpair(sv);
	int nul = open("/dev/null", O_RDONLY);
	assert_true(nul >= 0);
	int fds[2] = { nul, nul };
	uint8_t out[100];
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)i;
	assert_int_equal(rdp_send(sv[0], out, sizeof(out), fds, 2, false), 0);

	uint8_t in[32];
	memset(in, 0xee, sizeof(in));
	struct rdp_rx rx;
	assert_int_equal(rdp_recv(sv[1], in, 16, &rx, false), 1);
	assert_true(rx.truncated);
	assert_int_equal(rx.len, sizeof(out));
	assert_memory_equal(in, out, 16);
	assert_int_equal(in[16], 0xee);
	assert_int_equal(rx.nfds, 2);
	rdp_rx_close_fds(&rx);

	/* The rest of that message is gone: the next recv gets the next message. */
	assert_int_equal(rdp_send(sv[0], "next", 4, NULL, 0, false), 0);
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 1);
	assert_false(rx.truncated);
	assert_int_equal(rx.len, 4);
	assert_int_equal(rx.nfds, 0);
	assert_memory_equal(in, "next", 4);

	/* A hostile peer's oversized message is seen as such, so the daemon can say TOO_BIG. */
	static uint8_t big[RDP_MSG_MAX + 1];
	static uint8_t bin[RDP_MSG_MAX];
	mkhdr(big, sizeof(big), RDP_MSG_CONTROL, 0, 1, 0);
	assert_int_equal(rdp_send(sv[0], big, sizeof(big), NULL, 0, false), 0);
	assert_int_equal(rdp_recv(sv[1], bin, sizeof(bin), &rx, false), 1);
	assert_true(rx.truncated);
	assert_int_equal(rx.len, RDP_MSG_MAX + 1);
	assert_int_equal(chk_req(bin, rx.len, rx.nfds), RDP_E_TOO_BIG);
	close(nul);
	close(sv[0]);
	close(sv[1]);
}

/* fds on an empty message are not lost: recv reports a message, not end of stream. */
static void test_recv_empty_with_fds(void **state)
{
	(void)state;
	int sv[2];
	seqpair(sv);
	int nul = open("/dev/null", O_RDONLY);
	assert_true(nul >= 0);
	assert_int_equal(rdp_send(sv[0], "", 0, &nul, 1, false), 0);
	uint8_t in[32];
	struct rdp_rx rx;
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, 0);
	assert_int_equal(rx.nfds, 1);
	assert_same_file(rx.fds[0], nul);
	assert_int_equal(chk_req(in, rx.len, rx.nfds), RDP_E_SHORT);
	rdp_rx_close_fds(&rx);
	close(nul);
	close(sv[0]);
	close(sv[1]);
}

static void test_recv_eof_eagain_epipe(void **state)
{
	(void)state;
	int sv[2];
	seqpair(sv);
	uint8_t in[32];
	struct rdp_rx rx;
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, true), -EAGAIN);
	assert_int_equal(rx.nfds, 0);

	/* Queued messages are still delivered after the peer closes, then end of stream. */
	assert_int_equal(rdp_send(sv[0], "abc", 3, NULL, 0, true), 0);
	close(sv[0]);
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 1);
	assert_int_equal(rx.len, 3);
	assert_int_equal(rdp_recv(sv[1], in, sizeof(in), &rx, false), 0);
	assert_int_equal(rx.nfds, 0);

	/* Sending to a closed peer is an error the caller sees (and the process survives:
	 * rdp_send passes MSG_NOSIGNAL). */
	assert_int_equal(rdp_send(sv[1], "abc", 3, NULL, 0, false), -EPIPE);
	assert_int_equal(rdp_send(sv[1], "abc", 3, NULL, 0, true), -EPIPE);
	close(sv[1]);

	/* A non-socket is an error, not a crash. */
	assert_int_equal(rdp_send(-1, "abc", 3, NULL, 0, true), -EBADF);
	assert_int_equal(rdp_recv(-1, in, sizeof(in), &rx, true), -EBADF);
	assert_int_equal(rx.nfds, 0);
}

/* When the receiver runs out of fd numbers, the kernel drops fds and sets MSG_CTRUNC: that
 * is reported, and the fds that did arrive are handed over to be closed. */
static void test_recv_ctrunc(void **state)
{
	(void)state;
	int sv[2];
	seqpair(sv);
	int nul = open("/dev/null", O_RDONLY);
	assert_true(nul >= 0);

	/* Find the highest fd in use and the free numbers below it. */
	int maxfd = -1, used = 0;
	DIR *dir = opendir("/proc/self/fd");
	assert_non_null(dir);
	int dfd = dirfd(dir);
	struct dirent *e;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == dfd)
			continue;
		used++;
		if (fd > maxfd)
			maxfd = fd;
	}
	closedir(dir);
	int room = maxfd + 1 - used + 2; /* holes below maxfd, plus two above it */
	int k = room + 3;
	if (k > RDP_FDS_MAX) {
		/* Inherited fds leave too many free numbers below the highest one. */
		close(nul);
		close(sv[0]);
		close(sv[1]);
		skip();
	}
	int fds[RDP_FDS_MAX];
	for (int i = 0; i < k; i++)
		fds[i] = nul;
	assert_int_equal(rdp_send(sv[0], "ctr", 3, fds, (size_t)k, false), 0);

	struct rlimit old, low;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = (rlim_t)maxfd + 3;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	uint8_t in[32];
	struct rdp_rx rx;
	int r = rdp_recv(sv[1], in, sizeof(in), &rx, false);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);

	assert_int_equal(r, 1);
	assert_int_equal(rx.len, 3);
	assert_true(rx.ctruncated);
	assert_false(rx.truncated);
	assert_int_equal(rx.nfds, (size_t)room);
	for (size_t i = 0; i < rx.nfds; i++)
		assert_same_file(rx.fds[i], nul);
	rdp_rx_close_fds(&rx);
	close(nul);
	close(sv[0]);
	close(sv[1]);
}

#define T(f) cmocka_unit_test_setup_teardown(f, rdt_fd_setup, rdt_fd_teardown)
#define TE(f) cmocka_unit_test_setup_teardown(f, env_setup, env_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_buf_little_endian),
		T(test_buf_overrun_is_sticky),
		T(test_hdr_put_get),
		T(test_hello),
		T(test_welcome),
		T(test_add),
		T(test_mod),
		T(test_del_rearm),
		T(test_error),
		T(test_control_json),
		T(test_reply_batch),
		T(test_events_batch),
		T(test_add_full_batch),
		T(test_encoders_refuse_small_buffers),
		T(test_encoders_refuse_big_batches),
		T(test_short_and_long),
		T(test_length_mismatch),
		T(test_reserved_header_flags),
		T(test_unknown_and_wrong_side_types),
		T(test_hostile_counts),
		T(test_fixed_bodies),
		T(test_fd_counts),
		T(test_entry_reserved_bits),
		T(test_reason_str),
		TE(test_path_precedence),
		TE(test_path_too_long),
		T(test_sockaddr),
		T(test_send_recv_fds),
		T(test_recv_nofds),
		T(test_send_recv_max_fds),
		T(test_recv_truncated),
		T(test_recv_empty_with_fds),
		T(test_recv_eof_eagain_epipe),
		T(test_recv_ctrunc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
