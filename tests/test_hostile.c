/* Hostile input against a real readyd: hand-built malformed frames, fds that do not match
 * their message, requests that cannot be honoured, limits, and clients that stop reading or
 * vanish mid-batch. Each test checks what the offender gets (an ERROR with the right reason
 * and end of stream, or an errno in one reply entry), that every fd the daemon received was
 * closed (the daemon's and our fd counts come back), and that a bystander connected before
 * the hostile action is still served (an event for its pipe, and replies). */
#include "bystander.h"
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "../proto/rdp_io.h"

/* A bound on every wait for the daemon; never a timing assertion. */
#define WAIT_MS 5000

static struct rdt_daemon g_daemon; /* one daemon for the whole suite */

/* ---- the bystander (bystander.c): a well-behaved client that must not notice the offender */




/* Wait (bounded) for an event for 'token' on c; returns its readiness. Events for other
 * tokens are allowed (spurious readiness is part of the contract). */
static uint32_t wait_token(rd_client *c, uint64_t token)
{
	struct rd_event ev[64];

	for (int tries = 0; tries < 64; tries++) {
		int n = rd_wait(c, ev, 64, WAIT_MS);
		if (n <= 0)
			fail_msg("no event for token %llu within %d ms (rd_wait %d)",
				 (unsigned long long)token, WAIT_MS, n);
		for (int i = 0; i < n; i++)
			if (ev[i].token == token)
				return ev[i].ready;
	}
	fail_msg("events came, but none for token %llu", (unsigned long long)token);
	return 0;
}




/* ---- fixtures */

struct fixture {
	bool done;                  /* the test body ran to its end */
	struct rdt_fds fds;
	struct bystander by;        /* on the suite daemon */
	struct rdt_daemon extra;    /* a test's own daemon, for other limits; pid 0 when none */
	struct bystander by_extra;  /* on the extra daemon */
};

/* Wait until a freshly started daemon holds its idle fds, and return how many. The
 * harness's probe connects as soon as the socket listens, which can be before the daemon
 * made its signalfd, so one HELLO round trip first makes sure its loop runs. */
static int daemon_settle(const struct rdt_daemon *d)
{
	int fd = rdt_connect(d->sock);
	if (fd < 0)
		return fd;
	int r = rdt_hello(fd);
	close(fd);
	if (r < 0)
		return r;
	int idle = rdt_idle_fds(d->pid);
	return rdt_wait_fds(d->pid, idle) == idle ? idle : -EBUSY;
}

static int group_setup(void **state)
{
	(void)state;
	int r = rdt_daemon_start(&g_daemon, NULL);
	if (r == 0)
		r = daemon_settle(&g_daemon);
	if (r < 0) {
		print_error("cannot start readyd: %s\n", strerror(-r));
		return -1;
	}
	return 0;
}

/* cmocka 1.1 reports a failed group teardown but does not count it in its result, so
 * main() adds this in. */
static int g_daemon_exit = -1;

static int group_teardown(void **state)
{
	(void)state;
	g_daemon_exit = rdt_daemon_stop(&g_daemon);
	if (g_daemon_exit != 0) {
		print_error("readyd exited with status %d on SIGTERM, not 0\n", g_daemon_exit);
		return -1;
	}
	return 0;
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	fx->by.p[0] = fx->by.p[1] = fx->by_extra.p[0] = fx->by_extra.p[1] = -1;
	rdt_fds_snapshot(&fx->fds, g_daemon.pid);
	*state = fx;
	bystander_open(&fx->by, g_daemon.sock);
	return 0;
}

/* The end of every test: the suite's bystander is still served. */
static void finish(struct fixture *fx)
{
	bystander_check(&fx->by);
	fx->done = true;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	struct rdt_fds fds = fx->fds;
	bool done = fx->done;

	/* Left over only when a test failed half way. */
	bystander_close(&fx->by_extra);
	if (fx->extra.pid > 0)
		(void)rdt_daemon_stop(&fx->extra);
	int held = rdt_count_fds(g_daemon.pid);
	bool by_open = fx->by.c != NULL;
	bystander_close(&fx->by);
	free(fx);
	*state = NULL;
	/* A test that failed half way left its own fds open; its failure is reported
	 * already, so the fd accounting is only checked after a test that completed. Still
	 * let the daemon drop the bystander (its connection and pipe), so the next test
	 * starts from a settled count. */
	if (done)
		rdt_fds_assert_back(&fds, g_daemon.pid);
	else if (by_open)
		(void)rdt_wait_fds(g_daemon.pid, held - 2);
	return 0;
}

/* Start a test's own daemon with 'config' and a bystander on it. Returns the fds the
 * daemon holds idle, for extra_stop. */
static int extra_start(struct fixture *fx, const char *config)
{
	assert_int_equal(rdt_daemon_start(&fx->extra, config), 0);
	int idle = daemon_settle(&fx->extra);
	assert_true(idle > 0);
	bystander_open(&fx->by_extra, fx->extra.sock);
	return idle;
}

/* Close the extra daemon's bystander, check the daemon is back to its idle fds, stop it
 * and check it exits 0. */
static void extra_stop(struct fixture *fx, int idle)
{
	bystander_close(&fx->by_extra);
	assert_int_equal(rdt_wait_fds(fx->extra.pid, idle), idle);
	assert_int_equal(rdt_daemon_stop(&fx->extra), 0);
}

/* ---- raw protocol helpers */

static void put_hdr(uint8_t *buf, uint32_t length, uint16_t type, uint16_t flags, uint32_t id,
		    uint32_t count)
{
	struct rdp_buf b = rdp_buf_init(buf, RDP_HDR_SIZE);
	struct rdp_hdr h = { .length = length, .type = type, .flags = flags, .id = id,
			     .count = count };
	rdp_hdr_put(&b, &h);
	assert_false(b.err);
}

static void set_len(uint8_t *msg, uint32_t v)
{
	rdp_st32(msg, v);
}

static void set_count(uint8_t *msg, uint32_t v)
{
	rdp_st32(msg + 12, v);
}

static void set_type(uint8_t *msg, uint16_t v)
{
	msg[4] = (uint8_t)v;
	msg[5] = (uint8_t)(v >> 8);
}

static void set_flags(uint8_t *msg, uint16_t v)
{
	msg[6] = (uint8_t)v;
	msg[7] = (uint8_t)(v >> 8);
}

/* A raw SEQPACKET connection, after HELLO/WELCOME when 'hello'. */
static int raw_client(const char *sock, bool hello)
{
	int fd = rdt_connect(sock);
	if (fd < 0)
		fail_msg("connect %s: %s", sock, strerror(-fd));
	if (hello)
		assert_int_equal(rdt_hello(fd), 0);
	return fd;
}

/* The next message is an ERROR with 'reason' (and errno 'err', or any errno when 0), and
 * then the stream ends. */
static void expect_error(int fd, uint32_t reason, uint32_t err)
{
	uint8_t buf[RDP_MSG_MAX];
	struct rdp_hdr h;
	uint32_t got_err, got_reason;
	const char *text;
	size_t tl;

	int r = rdt_recv(fd, buf, sizeof(buf), WAIT_MS);
	if (r <= 0)
		fail_msg("expected ERROR (%s), got %s", rdp_reason_str(reason),
			 r == 0 ? "end of stream" : strerror(-r));
	assert_int_equal(rdp_check_daemon_msg(buf, (size_t)r, 0, &h), RDP_E_NONE);
	if (h.type != RDP_MSG_ERROR)
		fail_msg("expected ERROR (%s), got message type 0x%04x", rdp_reason_str(reason),
			 h.type);
	rdp_error_get(buf, (size_t)r, &got_err, &got_reason, &text, &tl);
	if (got_reason != reason)
		fail_msg("ERROR reason %u (%s), expected %u (%s)", got_reason,
			 rdp_reason_str(got_reason), reason, rdp_reason_str(reason));
	if (err)
		assert_int_equal(got_err, err);
	else
		assert_true(got_err > 0 && got_err < 4096);
	/* Then this client alone is disconnected. */
	r = rdt_recv(fd, buf, sizeof(buf), WAIT_MS);
	if (r != 0)
		fail_msg("expected end of stream after ERROR, got %d", r);
}

/* Read until the REPLY to request 'id' (EVENTS before it are skipped), and check its
 * statuses: 'count' of them, each want[i]. */
static void expect_reply(int fd, uint32_t id, uint32_t count, const uint32_t *want)
{
	uint8_t buf[RDP_MSG_MAX];
	struct rdp_hdr h;

	for (int i = 0; i < 1000; i++) {
		int r = rdt_recv(fd, buf, sizeof(buf), WAIT_MS);
		if (r <= 0)
			fail_msg("expected REPLY %u, got %s", id, r == 0 ? "end of stream" : strerror(-r));
		assert_int_equal(rdp_check_daemon_msg(buf, (size_t)r, 0, &h), RDP_E_NONE);
		if (h.type == RDP_MSG_EVENTS)
			continue;
		assert_int_equal(h.type, RDP_MSG_REPLY);
		assert_int_equal(h.id, id);
		assert_int_equal(h.count, count);
		for (uint32_t k = 0; k < count; k++)
			assert_int_equal(rdp_status_get(buf, k), want[k]);
		return;
	}
	fail_msg("no REPLY %u among 1000 messages", id);
}

/* Connect (with HELLO when 'hello'), send one message with 'nfds' fds, expect ERROR
 * 'reason' and end of stream, and check the daemon is back to the fds it held before. */
static void hostile(bool hello, const void *msg, size_t len, const int *fds, size_t nfds,
		    uint32_t reason)
{
	int base = rdt_count_fds(g_daemon.pid);
	int s = raw_client(g_daemon.sock, hello);
	int r = rdt_send(s, msg, len, fds, nfds);
	if (r < 0)
		fail_msg("send %zu bytes with %zu fds: %s", len, nfds, strerror(-r));
	expect_error(s, reason, reason == RDP_E_TOO_BIG ? EMSGSIZE : 0);
	close(s);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
}

/* The last copy of the other end of a socketpair is gone: 'fd' sees the hang-up. This is
 * how a test knows the daemon closed the copies it was sent. */
static void assert_hup(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
	assert_int_equal(poll(&p, 1, WAIT_MS), 1);
	assert_true(p.revents & (POLLHUP | POLLRDHUP));
}

/* The write end of a pipe whose read ends are all closed reports POLLERR. */
static void assert_no_readers(int wfd)
{
	struct pollfd p = { .fd = wfd, .events = POLLOUT };
	assert_int_equal(poll(&p, 1, WAIT_MS), 1);
	assert_true(p.revents & POLLERR);
}

static void fill_fds(int *fds, size_t n, int fd)
{
	for (size_t i = 0; i < n; i++)
		fds[i] = fd;
}

/* A valid ADD of 'n' entries, tokens first_token.., readable, edge. */
static size_t make_add(uint8_t *buf, uint32_t id, uint64_t first_token, uint32_t n)
{
	struct rdp_add_entry e[RDP_BATCH_MAX];
	for (uint32_t i = 0; i < n; i++)
		e[i] = (struct rdp_add_entry){ .token = first_token + i,
					       .interest = RDP_INTEREST_READABLE };
	size_t len = rdp_encode_add(buf, RDP_MSG_MAX, id, e, n);
	assert_true(len > 0);
	return len;
}

static size_t make_tokens(uint8_t *buf, uint16_t type, uint32_t id, uint64_t first_token,
			  uint32_t n)
{
	uint64_t tok[RDP_BATCH_MAX];
	for (uint32_t i = 0; i < n; i++)
		tok[i] = first_token + i;
	size_t len = rdp_encode_tokens(buf, RDP_MSG_MAX, type, id, tok, n);
	assert_true(len > 0);
	return len;
}

/* ---- malformed frames: ERROR with the reason, then end of stream */

static void test_short_message(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_HDR_SIZE];
	int sp[2];

	memset(buf, 0xab, sizeof(buf));
	hostile(false, buf, 5, NULL, 0, RDP_E_SHORT);
	hostile(true, buf, 5, NULL, 0, RDP_E_SHORT);
	hostile(true, buf, RDP_HDR_SIZE - 1, NULL, 0, RDP_E_SHORT);
	/* An empty packet: SEQPACKET shows it as end of stream, the daemon still says why. */
	hostile(true, buf, 0, NULL, 0, RDP_E_SHORT);
	/* A short message carrying an fd: the fd is closed too. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	hostile(true, buf, 5, &sp[0], 1, RDP_E_SHORT);
	hostile(true, buf, 0, &sp[0], 1, RDP_E_SHORT);
	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	finish(fx);
}

static void test_unknown_type(void **state)
{
	struct fixture *fx = *state;
	static const uint16_t types[] = { 0x0000, 0x0009, 0x7fff, 0xffff,
					  /* daemon-only types sent by a client */
					  RDP_MSG_WELCOME, RDP_MSG_REPLY, RDP_MSG_EVENTS,
					  RDP_MSG_ERROR, RDP_MSG_CONTROL_REPLY };
	uint8_t buf[RDP_MSG_MAX];

	/* A well-formed DEL of one token, retyped. */
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		size_t len = make_tokens(buf, RDP_MSG_DEL, 7, 1, 1);
		set_type(buf, types[i]);
		hostile(true, buf, len, NULL, 0, RDP_E_TYPE);
	}
	/* Before HELLO too: the framing is checked first. */
	put_hdr(buf, RDP_HDR_SIZE + 8, 0x0042, 0, 7, 1);
	rdp_st64(buf + RDP_HDR_SIZE, 1);
	hostile(false, buf, RDP_HDR_SIZE + 8, NULL, 0, RDP_E_TYPE);

	finish(fx);
}

static void test_reserved_header_flags(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];

	size_t len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION, 0);
	set_flags(buf, 0x0001);
	hostile(false, buf, len, NULL, 0, RDP_E_HDR_FLAGS);

	len = make_tokens(buf, RDP_MSG_DEL, 2, 1, 1);
	set_flags(buf, 0x8000);
	hostile(true, buf, len, NULL, 0, RDP_E_HDR_FLAGS);

	/* An otherwise valid ADD: its fd is closed with the connection. */
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	len = make_add(buf, 3, 1, 1);
	set_flags(buf, 0xffff);
	hostile(true, buf, len, &p[0], 1, RDP_E_HDR_FLAGS);
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);

	finish(fx);
}

static void test_hello_wrong_version(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[64];

	size_t len = rdp_encode_hello(buf, sizeof(buf), 1, 0, 0);
	hostile(false, buf, len, NULL, 0, RDP_E_VERSION);

	/* A newer version is negotiated down, not refused. */
	int s = raw_client(g_daemon.sock, false);
	len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION + 1, 0xffffffffu);
	assert_int_equal(rdt_send(s, buf, len, NULL, 0), 0);
	int r = rdt_recv(s, buf, sizeof(buf), WAIT_MS);
	assert_true(r > 0);
	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(buf, (size_t)r, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_WELCOME);
	struct rdp_welcome w;
	rdp_welcome_get(buf, &w);
	assert_int_equal(w.version, RDP_VERSION);
	assert_int_equal(w.features, RDP_FEATURES_KNOWN);
	close(s);

	finish(fx);
}

static void test_hello_wrong_body(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[64];

	/* HELLO with 4 and with 12 body bytes instead of 8. */
	put_hdr(buf, RDP_HDR_SIZE + 4, RDP_MSG_HELLO, 0, 1, 0);
	rdp_st32(buf + RDP_HDR_SIZE, RDP_VERSION);
	hostile(false, buf, RDP_HDR_SIZE + 4, NULL, 0, RDP_E_BODY);
	put_hdr(buf, RDP_HDR_SIZE + 12, RDP_MSG_HELLO, 0, 1, 0);
	memset(buf + RDP_HDR_SIZE, 0, 12);
	rdp_st32(buf + RDP_HDR_SIZE, RDP_VERSION);
	hostile(false, buf, RDP_HDR_SIZE + 12, NULL, 0, RDP_E_BODY);
	/* CONTROL with an empty body. */
	put_hdr(buf, RDP_HDR_SIZE, RDP_MSG_CONTROL, 0, 2, 0);
	hostile(true, buf, RDP_HDR_SIZE, NULL, 0, RDP_E_BODY);

	finish(fx);
}

/* ---- protocol state */

static void test_request_before_hello(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int p[2];
	size_t len;

	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	len = make_add(buf, 1, 1, 1);
	hostile(false, buf, len, &p[0], 1, RDP_E_STATE);
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);

	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	hostile(false, buf, len, NULL, 0, RDP_E_STATE);
	len = make_tokens(buf, RDP_MSG_REARM, 1, 1, 1);
	hostile(false, buf, len, NULL, 0, RDP_E_STATE);
	struct rdp_add_entry e = { .token = 1, .interest = RDP_INTEREST_READABLE };
	len = rdp_encode_mod(buf, sizeof(buf), 1, &e, 1);
	hostile(false, buf, len, NULL, 0, RDP_E_STATE);
	static const char status[] = "{\"command\":\"status\"}";
	len = rdp_encode_json(buf, sizeof(buf), RDP_MSG_CONTROL, 1, status, strlen(status));
	hostile(false, buf, len, NULL, 0, RDP_E_STATE);

	finish(fx);
}

static void test_hello_twice(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[64];

	size_t len = rdp_encode_hello(buf, sizeof(buf), 2, RDP_VERSION, 0);
	hostile(true, buf, len, NULL, 0, RDP_E_STATE);

	finish(fx);
}

/* ---- lengths and counts */

static void test_length_mismatch(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	static const uint32_t lies[] = { 0, 16, 23, 25, 32, 4096, RDP_MSG_MAX, RDP_MSG_MAX + 1,
					 UINT32_MAX - 15, UINT32_MAX };

	/* A DEL of one token is 24 bytes; its header says otherwise. */
	for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
		size_t len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
		set_len(buf, lies[i]);
		hostile(true, buf, len, NULL, 0, RDP_E_LENGTH);
	}
	/* The first packet of a message split in two: the header alone, without its body
	 * (no message continues into the next packet). */
	size_t len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	hostile(true, buf, RDP_HDR_SIZE, NULL, 0, RDP_E_LENGTH);
	/* HELLO that claims more than it carries, before HELLO. */
	len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION, 0);
	set_len(buf, (uint32_t)len + 8);
	hostile(false, buf, len, NULL, 0, RDP_E_LENGTH);

	finish(fx);
}

static void test_count_mismatch(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int p[2];
	size_t len;

	/* DEL: two tokens announced, one sent; one announced, two sent; none. */
	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	set_count(buf, 2);
	hostile(true, buf, len, NULL, 0, RDP_E_COUNT);
	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 2);
	set_count(buf, 1);
	hostile(true, buf, len, NULL, 0, RDP_E_COUNT);
	put_hdr(buf, RDP_HDR_SIZE, RDP_MSG_DEL, 0, 1, 0);
	hostile(true, buf, RDP_HDR_SIZE, NULL, 0, RDP_E_COUNT);
	/* A body that is not a whole number of entries. */
	put_hdr(buf, RDP_HDR_SIZE + 12, RDP_MSG_REARM, 0, 1, 1);
	memset(buf + RDP_HDR_SIZE, 0, 12);
	hostile(true, buf, RDP_HDR_SIZE + 12, NULL, 0, RDP_E_COUNT);
	/* ADD with one fd, count 1 and a 20-byte body. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	len = make_add(buf, 1, 1, 1);
	memset(buf + len, 0, 4);
	set_len(buf, (uint32_t)len + 4);
	hostile(true, buf, len + 4, &p[0], 1, RDP_E_COUNT);
	/* ADD with count 2, one entry and two fds (as the count asks). */
	int two[2] = { p[0], p[0] };
	len = make_add(buf, 1, 1, 1);
	set_count(buf, 2);
	hostile(true, buf, len, two, 2, RDP_E_COUNT);
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);
	/* A message without entries that has a count. */
	len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION, 0);
	set_count(buf, 1);
	hostile(false, buf, len, NULL, 0, RDP_E_COUNT);

	finish(fx);
}

static void test_count_above_batch_limit(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	size_t len;

	/* 254 entries, the length matching them exactly. */
	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, RDP_BATCH_MAX);
	rdp_st64(buf + len, 1000);
	len += RDP_TOK_ENTRY_SIZE;
	set_len(buf, (uint32_t)len);
	set_count(buf, RDP_BATCH_MAX + 1);
	hostile(true, buf, len, NULL, 0, RDP_E_BATCH);

	struct rdp_add_entry e[RDP_BATCH_MAX + 1];
	for (uint32_t i = 0; i < RDP_BATCH_MAX + 1; i++)
		e[i] = (struct rdp_add_entry){ .token = i + 1, .interest = RDP_INTEREST_READABLE };
	len = rdp_encode_mod(buf, sizeof(buf), 1, e, RDP_BATCH_MAX);
	memcpy(buf + len, buf + len - RDP_MOD_ENTRY_SIZE, RDP_MOD_ENTRY_SIZE);
	len += RDP_MOD_ENTRY_SIZE;
	set_len(buf, (uint32_t)len);
	set_count(buf, RDP_BATCH_MAX + 1);
	hostile(true, buf, len, NULL, 0, RDP_E_BATCH);

	/* Counts whose 32-bit product with the entry size wraps to the body sent:
	 * 0x20000001 * 8 = 8 and 0x10000001 * 16 = 16 (mod 2^32), and 0xffffffff. */
	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	set_count(buf, 0x20000001u);
	hostile(true, buf, len, NULL, 0, RDP_E_BATCH);
	len = make_tokens(buf, RDP_MSG_REARM, 1, 1, 1);
	set_count(buf, 0x20000001u);
	hostile(true, buf, len, NULL, 0, RDP_E_BATCH);
	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 2);
	set_count(buf, UINT32_MAX); /* 0xffffffff * 8 = -8 (mod 2^32) */
	hostile(true, buf, len, NULL, 0, RDP_E_BATCH);

	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	len = make_add(buf, 1, 1, 1);
	set_count(buf, 0x10000001u);
	hostile(true, buf, len, &p[0], 1, RDP_E_BATCH);
	len = make_add(buf, 1, 1, 1);
	set_count(buf, UINT32_MAX); /* 0xffffffff * 16 + 16 = 0 (mod 2^32) */
	hostile(true, buf, len, &p[0], 1, RDP_E_BATCH);
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);

	finish(fx);
}

static void test_entry_reserved_bits(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int p[2], fds[3];
	static const struct { uint32_t interest, flags; } bad[] = {
		{ 0x8, 0 }, { RDP_INTEREST_READABLE | 0x80000000u, 0 }, { RDP_INTEREST_READABLE, 0x2 },
		{ RDP_INTEREST_WRITABLE, 0xffffffffu },
	};

	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	fill_fds(fds, 3, p[0]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* The bad entry last, after two good ones: nothing of it is registered. */
		struct rdp_add_entry e[3] = {
			{ .token = 1, .interest = RDP_INTEREST_READABLE },
			{ .token = 2, .interest = RDP_INTEREST_WRITABLE, .flags = RDP_FLAG_ONESHOT },
			{ .token = 3, .interest = bad[i].interest, .flags = bad[i].flags },
		};
		size_t len = rdp_encode_add(buf, sizeof(buf), 1, e, 3);
		hostile(true, buf, len, fds, 3, RDP_E_ENTRY);
		len = rdp_encode_mod(buf, sizeof(buf), 1, e, 3);
		hostile(true, buf, len, NULL, 0, RDP_E_ENTRY);
	}
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);

	finish(fx);
}

/* ---- fds that do not match their message */

static void test_add_fds_differ_from_entries(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int sp[2], fds[RDP_FDS_MAX];
	size_t len;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	fill_fds(fds, RDP_FDS_MAX, sp[0]);

	len = make_add(buf, 1, 1, 2); /* more fds than entries */
	hostile(true, buf, len, fds, 3, RDP_E_FDS);
	len = make_add(buf, 1, 1, 1);
	hostile(true, buf, len, fds, RDP_FDS_MAX, RDP_E_FDS);
	len = make_add(buf, 1, 1, 3); /* fewer */
	hostile(true, buf, len, fds, 1, RDP_E_FDS);
	len = make_add(buf, 1, 1, RDP_BATCH_MAX);
	hostile(true, buf, len, fds, RDP_FDS_MAX - 1, RDP_E_FDS);
	len = make_add(buf, 1, 1, 1); /* none */
	hostile(true, buf, len, NULL, 0, RDP_E_FDS);

	/* hostile() saw the daemon's fd count come back each time; and no copy is left:
	 * the peer hangs up once ours is closed. */
	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	finish(fx);
}

static void test_fds_on_message_without_fds(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int sp[2], fds[2];
	size_t len;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	fill_fds(fds, 2, sp[0]);

	len = make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	hostile(true, buf, len, fds, 1, RDP_E_FDS);
	len = make_tokens(buf, RDP_MSG_REARM, 1, 1, 2);
	hostile(true, buf, len, fds, 2, RDP_E_FDS);
	struct rdp_add_entry e = { .token = 1, .interest = RDP_INTEREST_READABLE };
	len = rdp_encode_mod(buf, sizeof(buf), 1, &e, 1);
	hostile(true, buf, len, fds, 1, RDP_E_FDS);
	static const char status[] = "{\"command\":\"status\"}";
	len = rdp_encode_json(buf, sizeof(buf), RDP_MSG_CONTROL, 1, status, strlen(status));
	hostile(true, buf, len, fds, 1, RDP_E_FDS);
	len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION, 0);
	hostile(false, buf, len, fds, 1, RDP_E_FDS);
	/* The second HELLO too: fds are checked with the framing. */
	hostile(true, buf, len, fds, 1, RDP_E_FDS);

	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	finish(fx);
}

/* ---- sizes */

static void test_message_too_big(void **state)
{
	struct fixture *fx = *state;
	size_t cap = 2 * RDP_MSG_MAX;
	uint8_t *buf = calloc(1, cap);
	assert_non_null(buf);

	/* One byte over, with a truthful header; far over; and over with a header that claims
	 * a small message. */
	put_hdr(buf, RDP_MSG_MAX + 1, RDP_MSG_CONTROL, 0, 1, 0);
	hostile(true, buf, RDP_MSG_MAX + 1, NULL, 0, RDP_E_TOO_BIG);
	put_hdr(buf, 2 * RDP_MSG_MAX, RDP_MSG_CONTROL, 0, 1, 0);
	hostile(true, buf, 2 * RDP_MSG_MAX, NULL, 0, RDP_E_TOO_BIG);
	make_tokens(buf, RDP_MSG_DEL, 1, 1, 1);
	hostile(true, buf, RDP_MSG_MAX + 4096, NULL, 0, RDP_E_TOO_BIG);
	/* Before HELLO as well. */
	hostile(false, buf, RDP_MSG_MAX + 100, NULL, 0, RDP_E_TOO_BIG);

	/* Exactly the maximum is allowed: a CONTROL of 65536 bytes gets its answer. */
	static const char status[] = "{\"command\":\"status\"}";
	memset(buf, ' ', RDP_MSG_MAX);
	memcpy(buf + RDP_HDR_SIZE, status, strlen(status));
	put_hdr(buf, RDP_MSG_MAX, RDP_MSG_CONTROL, 0, 9, 0);
	int s = raw_client(g_daemon.sock, true);
	assert_int_equal(rdt_send(s, buf, RDP_MSG_MAX, NULL, 0), 0);
	int r = rdt_recv(s, buf, RDP_MSG_MAX, WAIT_MS);
	assert_true(r > 0);
	struct rdp_hdr h;
	assert_int_equal(rdp_check_daemon_msg(buf, (size_t)r, 0, &h), RDP_E_NONE);
	assert_int_equal(h.type, RDP_MSG_CONTROL_REPLY);
	assert_int_equal(h.id, 9);
	close(s);
	free(buf);

	finish(fx);
}

/* The daemon's cmsg buffer holds 253 fds and one sendmsg carries at most 253
 * (SCM_MAX_FD), so the sender alone cannot make the control data overflow. The closest
 * thing: a message too big for the daemon (MSG_TRUNC) with 253 fds. All of them arrive;
 * the daemon must close them all. */
static void test_too_big_with_fds(void **state)
{
	struct fixture *fx = *state;
	size_t cap = 2 * RDP_MSG_MAX;
	uint8_t *buf = calloc(1, cap);
	int sp[2], fds[RDP_FDS_MAX];

	assert_non_null(buf);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	fill_fds(fds, RDP_FDS_MAX, sp[0]);

	/* An ADD whose 253 entries are followed by junk up to 70000 bytes. */
	make_add(buf, 1, 1, RDP_BATCH_MAX);
	set_len(buf, 70000);
	hostile(true, buf, 70000, fds, RDP_FDS_MAX, RDP_E_TOO_BIG);
	hostile(false, buf, 70000, fds, 17, RDP_E_TOO_BIG);

	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);
	free(buf);

	finish(fx);
}

/* Highest fd number open in a process. */
static int max_fd_of(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	assert_non_null(dir);
	int max = -1;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.' && atoi(e->d_name) > max)
			max = atoi(e->d_name);
	closedir(dir);
	return max;
}

/* A real MSG_CTRUNC: the kernel stops installing fds in the receiver when its fd table is
 * at RLIMIT_NOFILE (scm_detach_fds), drops the rest and sets MSG_CTRUNC. Lower a test
 * daemon's limit to a few slots above what it holds and send 253 fds. */
static void test_ctrunc_when_daemon_out_of_fd_slots(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int sp[2], fds[RDP_FDS_MAX];
	struct rlimit old, low;

	int idle = extra_start(fx, NULL);
	pid_t pid = fx->extra.pid;
	int s = raw_client(fx->extra.sock, true);
	int base = rdt_count_fds(pid);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	fill_fds(fds, RDP_FDS_MAX, sp[0]);
	size_t len = make_add(buf, 5, 1, RDP_BATCH_MAX); /* well-formed */

	assert_int_equal(prlimit(pid, RLIMIT_NOFILE, NULL, &old), 0);
	low.rlim_cur = (rlim_t)max_fd_of(pid) + 1 + 16;
	low.rlim_max = old.rlim_max;
	assert_true(low.rlim_cur < old.rlim_cur);
	assert_int_equal(prlimit(pid, RLIMIT_NOFILE, &low, NULL), 0);

	assert_int_equal(rdt_send(s, buf, len, fds, RDP_FDS_MAX), 0);
	expect_error(s, RDP_E_CTRUNC, 0);
	close(s);
	/* The fds that did arrive were closed (the kernel dropped the others). */
	assert_int_equal(rdt_wait_fds(pid, base - 1), base - 1);
	/* The daemon still serves others, even with only its 16 spare slots. */
	bystander_check(&fx->by_extra);

	assert_int_equal(prlimit(pid, RLIMIT_NOFILE, &old, NULL), 0);
	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

/* ---- well-formed requests that cannot be honoured: an errno in that entry */

static void test_add_regular_file_and_directory(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	char path[] = "/tmp/readyd-hostile-XXXXXX";
	int p[2];

	int base = rdt_count_fds(g_daemon.pid);
	int file = mkostemp(path, O_CLOEXEC);
	assert_true(file >= 0);
	unlink(path);
	int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dir >= 0);
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);

	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	assert_int_equal(rd_add(c, file, 1, RD_READABLE, RD_EDGE), -EPERM);
	assert_int_equal(rd_add(c, dir, 2, RD_READABLE | RD_WRITABLE, RD_ONESHOT), -EPERM);
	/* A good fd in the same batch still succeeds. */
	struct rd_entry e[3] = {
		{ .fd = file, .token = 10, .interest = RD_READABLE },
		{ .fd = p[0], .token = 11, .interest = RD_READABLE },
		{ .fd = dir, .token = 12, .interest = RD_READABLE },
	};
	assert_int_equal(rd_add_batch(c, e, 3), 1);
	assert_int_equal(e[0].status, -EPERM);
	assert_int_equal(e[1].status, 0);
	assert_int_equal(e[2].status, -EPERM);
	/* The failed tokens were never registered; the good one works. */
	assert_int_equal(rd_delete(c, 10), -ENOENT);
	assert_int_equal(rd_delete(c, 1), -ENOENT);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_true(wait_token(c, 11) & RD_READABLE);
	assert_int_equal(rd_delete(c, 11), 0);
	rd_close(c);

	close(file);
	close(dir);
	close(p[0]);
	close(p[1]);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	finish(fx);
}

static void test_unknown_token(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int p[2];

	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	assert_int_equal(rd_delete(c, 77), -ENOENT);
	assert_int_equal(rd_modify(c, 77, RD_WRITABLE, RD_EDGE), -ENOENT);
	assert_int_equal(rd_rearm(c, 77), -ENOENT);

	/* Next to a known token, in one batch: only the unknown one fails. */
	assert_int_equal(rd_add(c, p[0], 5, RD_READABLE, RD_ONESHOT), 0);
	struct rd_entry e[3] = { { .token = 78 }, { .token = 5 }, { .token = UINT64_MAX } };
	assert_int_equal(rd_rearm_batch(c, e, 3), 1);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, 0);
	assert_int_equal(e[2].status, -ENOENT);
	e[1].interest = e[0].interest = e[2].interest = RD_READABLE;
	e[1].flags = RD_ONESHOT;
	assert_int_equal(rd_modify_batch(c, e, 3), 1);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, 0);
	assert_int_equal(e[2].status, -ENOENT);
	assert_int_equal(rd_delete_batch(c, e, 3), 1);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, 0);
	assert_int_equal(e[2].status, -ENOENT);
	/* Deleted: now unknown as well. */
	assert_int_equal(rd_delete(c, 5), -ENOENT);
	assert_int_equal(rd_rearm(c, 5), -ENOENT);
	/* The connection is still usable. */
	assert_int_equal(rd_add(c, p[0], 5, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_true(wait_token(c, 5) & RD_READABLE);
	rd_close(c);
	close(p[0]);
	close(p[1]);

	finish(fx);
}

static void test_duplicate_token(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int p[2], sp[2], sq[2];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sq), 0);
	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	int conn = rdt_wait_fds(g_daemon.pid, base + 1);
	assert_int_equal(conn, base + 1);

	assert_int_equal(rd_add(c, p[0], 42, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(c, sp[0], 42, RD_WRITABLE, RD_EDGE), -EEXIST);
	/* Within one batch, the second of two equal tokens. */
	struct rd_entry e[2] = {
		{ .fd = sq[0], .token = 43, .interest = RD_READABLE },
		{ .fd = sp[0], .token = 43, .interest = RD_READABLE },
	};
	assert_int_equal(rd_add_batch(c, e, 2), 1);
	assert_int_equal(e[0].status, 0);
	assert_int_equal(e[1].status, -EEXIST);
	/* Only the first registrations hold fds; the duplicates' copies were closed. */
	assert_int_equal(rdt_wait_fds(g_daemon.pid, conn + 2), conn + 2);
	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	/* The first registration of 42 is the one that stays: its pipe reports. */
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_int_equal(wait_token(c, 42) & (RD_READABLE | RD_WRITABLE), RD_READABLE);
	assert_int_equal(rd_delete(c, 42), 0);
	assert_int_equal(rd_delete(c, 43), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, conn), conn);
	rd_close(c);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(sq[0]);
	assert_hup(sq[1]);
	close(sq[1]);
	close(p[0]);
	close(p[1]);

	finish(fx);
}

static void test_registration_limit(void **state)
{
	struct fixture *fx = *state;
	rd_client *a, *b;
	int p[6][2], sp[2];

	/* Its bystander holds one registration of its own connection. */
	int idle = extra_start(fx, "{\"limits\":{\"registrations_per_client\":4}}");
	for (int i = 0; i < 6; i++)
		assert_int_equal(pipe2(p[i], O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);

	assert_int_equal(rd_open(&a, fx->extra.sock), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rd_add(a, p[i][0], (uint64_t)i + 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(a, sp[0], 5, RD_READABLE, RD_EDGE), -ENOSPC);
	struct rd_entry e[2] = {
		{ .fd = p[4][0], .token = 6, .interest = RD_READABLE },
		{ .fd = sp[0], .token = 7, .interest = RD_READABLE },
	};
	assert_int_equal(rd_add_batch(a, e, 2), 0);
	assert_int_equal(e[0].status, -ENOSPC);
	assert_int_equal(e[1].status, -ENOSPC);
	/* The refused fds were closed by the daemon. */
	close(sp[0]);
	assert_hup(sp[1]);
	close(sp[1]);

	/* Another client of the same daemon has its own allowance. */
	assert_int_equal(rd_open(&b, fx->extra.sock), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rd_add(b, p[5][0], (uint64_t)i + 100, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(b, p[5][0], 104, RD_READABLE, RD_EDGE), -ENOSPC);
	bystander_check(&fx->by_extra);

	/* The full connection stays usable: its registrations report, and a delete makes
	 * room for one more. */
	assert_int_equal(write(p[2][1], "x", 1), 1);
	assert_true(wait_token(a, 3) & RD_READABLE);
	assert_int_equal(rd_delete(a, 1), 0);
	assert_int_equal(rd_add(a, p[4][0], 6, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(a, p[0][0], 1, RD_READABLE, RD_EDGE), -ENOSPC);

	rd_close(a);
	rd_close(b);
	for (int i = 0; i < 6; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

/* The daemon's own fd limit (max_fds: RLIMIT_NOFILE less a reserve) is a limit like the
 * others: reaching it gives EMFILE in the entries, and the connection stays. Full batches
 * of 253 fds, before and after the limit is reached, must not make the kernel truncate the
 * control data (which would cost the client its connection). The daemon runs under a
 * hard RLIMIT_NOFILE of 512 (the harness applies READYD_TEST_NOFILE in the child). */
static void test_fd_limit_reached_in_full_batch(void **state)
{
	struct fixture *fx = *state;
	struct rd_entry e[RD_BATCH_MAX];
	struct rlimit got;
	rd_client *c;
	int p[2];

	setenv("READYD_TEST_NOFILE", "512", 1);
	int r = rdt_daemon_start(&fx->extra, NULL);
	unsetenv("READYD_TEST_NOFILE");
	assert_int_equal(r, 0);
	assert_int_equal(prlimit(fx->extra.pid, RLIMIT_NOFILE, NULL, &got), 0);
	if (got.rlim_max != 512) {
		/* Under valgrind, say: the harness's setrlimit in the forked child is
		 * virtualised and never reaches the daemon. */
		print_message("SKIP: the daemon did not get RLIMIT_NOFILE 512 (READYD_TEST_NOFILE)\n");
		skip();
	}
	int idle = daemon_settle(&fx->extra);
	assert_true(idle > 0);
	bystander_open(&fx->by_extra, fx->extra.sock);

	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(rd_open(&c, fx->extra.sock), 0);
	int full_batches = 0;
	uint64_t token = 1;
	for (int round = 0; round < 8 && full_batches < 2; round++) {
		for (int i = 0; i < RD_BATCH_MAX; i++)
			e[i] = (struct rd_entry){ .fd = p[0], .token = token++,
						  .interest = RD_READABLE };
		r = rd_add_batch(c, e, RD_BATCH_MAX);
		if (r < 0)
			fail_msg("batch %d of 253 adds: the call failed: %s", round + 1,
				 strerror(-r));
		bool full = false;
		for (int i = 0; i < RD_BATCH_MAX; i++) {
			if (e[i].status == -EMFILE)
				full = true;
			else if (full) /* once the limit is reached, it stays reached */
				fail_msg("entry %d: status %d after EMFILE", i, e[i].status);
			else
				assert_int_equal(e[i].status, 0);
		}
		full_batches += full;
	}
	/* A second batch was refused entry by entry too, the connection still there. */
	assert_int_equal(full_batches, 2);
	assert_int_equal(r, 0);
	/* A delete makes room again. */
	assert_int_equal(rd_delete(c, 1), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(c, p[0], token, RD_READABLE, RD_EDGE), -EMFILE);
	bystander_event(&fx->by_extra);
	rd_close(c);
	close(p[0]);
	close(p[1]);

	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

/* ---- clients that stop reading, or leave half way */

static void make_ready(int (*p)[2], int n)
{
	for (int i = 0; i < n; i++)
		(void)!write(p[i][1], "r", 1);
}

static void test_pipelining_without_reading(void **state)
{
	struct fixture *fx = *state;
	enum { NPIPES = 16, MAX_REQUESTS = 10000 };
	int p[NPIPES][2], rfd[NPIPES];
	uint8_t *buf = malloc(RDP_MSG_MAX);
	uint32_t ok[NPIPES] = { 0 };

	assert_non_null(buf);
	int base = rdt_count_fds(g_daemon.pid);
	int s = raw_client(g_daemon.sock, true);
	for (int i = 0; i < NPIPES; i++) {
		assert_int_equal(pipe2(p[i], O_CLOEXEC | O_NONBLOCK), 0);
		rfd[i] = p[i][0];
	}
	size_t len = make_add(buf, 1, 1, NPIPES);
	assert_int_equal(rdt_send(s, buf, len, rfd, NPIPES), 0);
	expect_reply(s, 1, NPIPES, ok);

	/* From here on the client never reads: DELs of 253 unknown tokens each (1 KiB
	 * replies), sent without blocking, while its pipes keep becoming ready. */
	long rss0 = rdt_rss_kib(g_daemon.pid), rss_max = rss0;
	assert_true(rss0 > 0);
	uint32_t id = 1;
	int sent = 0;
	bool stalled = false;
	for (int attempt = 0; attempt < 4 * MAX_REQUESTS && sent < MAX_REQUESTS; attempt++) {
		len = make_tokens(buf, RDP_MSG_DEL, id + 1, (uint64_t)1 << 40 | (uint64_t)sent << 8,
				  RDP_BATCH_MAX);
		int r = rdp_send(s, buf, len, NULL, 0, true);
		if (r == -EAGAIN) {
			make_ready(p, NPIPES);
			long rss = rdt_rss_kib(g_daemon.pid);
			rss_max = rss > rss_max ? rss : rss_max;
			/* Wait (bounded) for the daemon to read more; when it does not, it has
			 * stopped reading this client, as it should. */
			struct pollfd pf = { .fd = s, .events = POLLOUT };
			if (poll(&pf, 1, 500) == 0) {
				stalled = true;
				break;
			}
			continue;
		}
		assert_int_equal(r, 0);
		id++;
		sent++;
		if (sent % 32 == 0)
			make_ready(p, NPIPES);
	}
	/* Events keep coming while nothing is read: they coalesce. */
	for (int i = 0; i < 200; i++) {
		make_ready(p, NPIPES);
		if (i % 20 == 0) {
			long rss = rdt_rss_kib(g_daemon.pid);
			rss_max = rss > rss_max ? rss : rss_max;
		}
	}
	long rss = rdt_rss_kib(g_daemon.pid);
	rss_max = rss > rss_max ? rss : rss_max;
	print_message("pipelined %d DELs of 253 tokens (%s); daemon RSS %ld KiB -> max %ld KiB\n",
		      sent, stalled ? "the daemon stopped reading" : "never blocked for long",
		      rss0, rss_max);
	assert_true(rss_max - rss0 < 4096);

	/* Nobody else waits for this client. */
	bystander_check(&fx->by);

	/* Nothing was lost either: every reply arrives, in order, each entry ENOENT. */
	uint32_t want = 2;
	for (int i = 0; i < 4 * MAX_REQUESTS + 1000 && want <= id; i++) {
		int r = rdt_recv(s, buf, RDP_MSG_MAX, WAIT_MS);
		if (r <= 0)
			fail_msg("draining: reply %u of %u: %s", want - 1, id - 1,
				 r == 0 ? "end of stream" : strerror(-r));
		struct rdp_hdr h;
		assert_int_equal(rdp_check_daemon_msg(buf, (size_t)r, 0, &h), RDP_E_NONE);
		if (h.type == RDP_MSG_EVENTS)
			continue;
		assert_int_equal(h.type, RDP_MSG_REPLY);
		assert_int_equal(h.id, want);
		assert_int_equal(h.count, RDP_BATCH_MAX);
		for (uint32_t k = 0; k < h.count; k++)
			assert_int_equal(rdp_status_get(buf, k), ENOENT);
		want++;
	}
	assert_int_equal(want, id + 1);

	close(s);
	for (int i = 0; i < NPIPES; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
	free(buf);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	finish(fx);
}

static void test_disconnect_mid_batch(void **state)
{
	struct fixture *fx = *state;
	uint8_t buf[RDP_MSG_MAX];
	int p[2], fds[RDP_FDS_MAX];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	fill_fds(fds, RDP_FDS_MAX, p[0]);
	int s = raw_client(g_daemon.sock, true);
	/* Six pipelined ADDs of 253 fds (1518 copies of one pipe), then a DEL, then gone. */
	for (uint32_t i = 0; i < 6; i++) {
		size_t len = make_add(buf, i + 1, (uint64_t)i * RDP_BATCH_MAX + 1, RDP_BATCH_MAX);
		assert_int_equal(rdt_send(s, buf, len, fds, RDP_FDS_MAX), 0);
	}
	size_t len = make_tokens(buf, RDP_MSG_DEL, 7, 1, 10);
	assert_int_equal(rdt_send(s, buf, len, NULL, 0), 0);
	close(s);

	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(p[0]);
	assert_no_readers(p[1]);
	close(p[1]);

	/* And one that leaves right after a full ADD, before its reply: the daemon may not
	 * even have read it yet. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p), 0);
	fill_fds(fds, RDP_FDS_MAX, p[0]);
	s = raw_client(g_daemon.sock, true);
	len = make_add(buf, 1, 1, RDP_BATCH_MAX);
	assert_int_equal(rdt_send(s, buf, len, fds, RDP_FDS_MAX), 0);
	shutdown(s, SHUT_RDWR);
	close(s);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(p[0]);
	assert_hup(p[1]);
	close(p[1]);

	finish(fx);
}

static void test_connections_per_uid_limit(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;

	/* The bystander is the first of three connections this uid may have. */
	int idle = extra_start(fx, "{\"limits\":{\"clients_per_uid\":3}}");
	pid_t pid = fx->extra.pid;
	int a = raw_client(fx->extra.sock, true);
	int b = raw_client(fx->extra.sock, true);
	int three = rdt_count_fds(pid);

	for (int i = 0; i < 3; i++) {
		int d = raw_client(fx->extra.sock, false);
		expect_error(d, RDP_E_RESOURCE, EUSERS);
		close(d);
	}
	assert_int_equal(rdt_wait_fds(pid, three), three);
	bystander_check(&fx->by_extra);

	/* Once one leaves, a new connection is accepted. */
	close(a);
	assert_int_equal(rdt_wait_fds(pid, three - 1), three - 1);
	assert_int_equal(rd_open(&c, fx->extra.sock), 0);
	int q[2];
	assert_int_equal(pipe2(q, O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, q[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_delete(c, 1), 0);
	close(q[0]);
	close(q[1]);
	/* And the limit holds again. */
	int d = raw_client(fx->extra.sock, false);
	expect_error(d, RDP_E_RESOURCE, EUSERS);
	close(d);
	rd_close(c);
	close(b);

	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

/* The library reports a refused connection with the errno the daemon's ERROR carries
 * (EUSERS), not with whatever its HELLO ran into on a socket the daemon already closed.
 * rd_adopt is given the socket once the refusal has fully arrived (ERROR queued, peer
 * gone), so the outcome does not depend on timing. */
static void test_refused_connection_errno_via_library(void **state)
{
	struct fixture *fx = *state;
	rd_client *c = NULL;

	/* Two connections allowed: the bystander's and a's. (Not one: the harness's probe
	 * connection may still be counted when the bystander connects.) */
	int idle = extra_start(fx, "{\"limits\":{\"clients_per_uid\":2}}");
	int a = raw_client(fx->extra.sock, true);
	int d = raw_client(fx->extra.sock, false);
	struct pollfd pf = { .fd = d, .events = POLLIN | POLLRDHUP };
	assert_int_equal(poll(&pf, 1, WAIT_MS), 1);
	for (int i = 0; i < 100 && !(pf.revents & POLLHUP); i++) {
		struct timespec ts = { .tv_nsec = 10 * 1000000L };
		nanosleep(&ts, NULL);
		assert_int_equal(poll(&pf, 1, 0), 1);
	}
	assert_true(pf.revents & POLLHUP);
	int r = rd_adopt(&c, d);
	if (r == 0)
		rd_close(c);
	else
		close(d);
	/* And rd_open, which sends its HELLO before the refusal arrives. */
	int r2 = rd_open(&c, fx->extra.sock);
	if (r2 == 0)
		rd_close(c);
	close(a);
	if (r != -EUSERS || r2 != -EUSERS)
		fail_msg("refused connection: rd_adopt %d (%s), rd_open %d (%s); expected -EUSERS",
			 r, strerror(-r), r2, strerror(-r2));

	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_short_message),
		T(test_unknown_type),
		T(test_reserved_header_flags),
		T(test_hello_wrong_version),
		T(test_hello_wrong_body),
		T(test_request_before_hello),
		T(test_hello_twice),
		T(test_length_mismatch),
		T(test_count_mismatch),
		T(test_count_above_batch_limit),
		T(test_entry_reserved_bits),
		T(test_add_fds_differ_from_entries),
		T(test_fds_on_message_without_fds),
		T(test_message_too_big),
		T(test_too_big_with_fds),
		T(test_ctrunc_when_daemon_out_of_fd_slots),
		T(test_add_regular_file_and_directory),
		T(test_unknown_token),
		T(test_duplicate_token),
		T(test_registration_limit),
		T(test_fd_limit_reached_in_full_batch),
		T(test_pipelining_without_reading),
		T(test_disconnect_mid_batch),
		T(test_connections_per_uid_limit),
		T(test_refused_connection_errno_via_library),
	};
	int failed = cmocka_run_group_tests_name("hostile", tests, group_setup, group_teardown);
	return failed + (g_daemon_exit != 0);
}
