/* Integration tests of the readiness contract against a real readyd: edge and oneshot
 * semantics, every readiness kind, ordering after delete and modify, EOF for a peer, a
 * client that never reads, and many clients at once. Every test is wrapped in an fd
 * check of this process and of the daemon. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "harness.h"


/* Long enough that a healthy daemon always answers first; only a bound on failure. */
#define PATIENCE_MS 5000
/* How long to look for an event that must not come. */
#define QUIET_MS 200

static rd_client *open_client(void)
{
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, rdt_suite.sock), 0);
	return c;
}

/* The next event, which must come. */
static struct rd_event next_event(rd_client *c)
{
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	return ev;
}

static void expect_quiet(rd_client *c)
{
	struct rd_event ev;
	int n = rd_wait(c, &ev, 1, QUIET_MS);
	if (n != 0)
		fail_msg("unexpected event: token %llu ready 0x%x", (unsigned long long)ev.token, ev.ready);
}

static void put_byte(int fd)
{
	assert_int_equal(write(fd, "x", 1), 1);
}

static void drain(int fd)
{
	char buf[4096];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static void test_edge_pipe(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 7, RD_READABLE, RD_EDGE), 0);
	expect_quiet(c); /* an empty pipe is not readable */

	put_byte(p[1]);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 7);
	assert_true(ev.ready & RD_READABLE);
	uint32_t tick = ev.tick;

	/* Edge-triggered: no new event until a new edge, even though data is still there. */
	expect_quiet(c);
	put_byte(p[1]);
	ev = next_event(c);
	assert_int_equal(ev.token, 7);
	assert_true((int32_t)(ev.tick - tick) > 0);
	drain(p[0]);

	assert_int_equal(rd_delete(c, 7), 0);
	close(p[0]);
	close(p[1]);
	rd_close(c);
}

static void test_edge_socketpair_and_eventfd(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int sp[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_true(efd >= 0);

	/* A fresh socket is writable at once. */
	assert_int_equal(rd_add(c, sp[0], 1, RD_READABLE | RD_WRITABLE, 0), 0);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 1);
	assert_int_equal(ev.ready & (RD_READABLE | RD_WRITABLE), RD_WRITABLE);

	assert_int_equal(write(sp[1], "hi", 2), 2);
	ev = next_event(c);
	assert_int_equal(ev.token, 1);
	assert_true(ev.ready & RD_READABLE);
	drain(sp[0]);

	assert_int_equal(rd_add(c, efd, 2, RD_READABLE, 0), 0);
	expect_quiet(c);
	uint64_t one = 1;
	assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
	ev = next_event(c);
	assert_int_equal(ev.token, 2);
	assert_int_equal(ev.ready, RD_READABLE);

	rd_close(c);
	close(sp[0]);
	close(sp[1]);
	close(efd);
}

static int tcp_listener(uint16_t *port)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 16), 0);
	socklen_t sl = sizeof(sa);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
	*port = ntohs(sa.sin_port);
	return l;
}

static int tcp_connect(uint16_t port, bool nonblock)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	assert_true(s >= 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int r = connect(s, (struct sockaddr *)&sa, sizeof(sa));
	assert_true(r == 0 || (nonblock && errno == EINPROGRESS));
	return s;
}

static void test_tcp_loopback(void **state)
{
	(void)state;
	rd_client *c = open_client();
	uint16_t port;
	int l = tcp_listener(&port);
	assert_int_equal(rd_add(c, l, 100, RD_READABLE, 0), 0);

	int cl = tcp_connect(port, false);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 100);
	assert_true(ev.ready & RD_READABLE);
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(s >= 0);

	assert_int_equal(rd_add(c, s, 101, RD_READABLE | RD_PRIORITY, 0), 0);
	assert_int_equal(write(cl, "abc", 3), 3);
	ev = next_event(c);
	assert_int_equal(ev.token, 101);
	assert_true(ev.ready & RD_READABLE);
	drain(s);

	/* Urgent data is priority readiness. */
	assert_int_equal(send(cl, "!", 1, MSG_OOB), 1);
	ev = next_event(c);
	assert_int_equal(ev.token, 101);
	assert_true(ev.ready & RD_PRIORITY);
	char oob;
	assert_int_equal(recv(s, &oob, 1, MSG_OOB), 1);

	/* The peer shuts down its writing side: read-closed, and still writable. */
	assert_int_equal(shutdown(cl, SHUT_WR), 0);
	ev = next_event(c);
	assert_int_equal(ev.token, 101);
	assert_true(ev.ready & RD_READ_CLOSED);
	assert_false(ev.ready & RD_WRITE_CLOSED);

	rd_close(c);
	close(cl);
	close(s);
	close(l);
}

static void test_error_and_write_closed(void **state)
{
	(void)state;
	rd_client *c = open_client();

	/* A connect refused on loopback: error readiness, whatever the interest. */
	uint16_t port;
	int l = tcp_listener(&port);
	close(l); /* nobody listens on port now */
	int s = tcp_connect(port, true);
	assert_int_equal(rd_add(c, s, 5, RD_WRITABLE, 0), 0);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 5);
	assert_true(ev.ready & RD_ERROR);
	assert_true(ev.ready & RD_WRITE_CLOSED);

	/* The write end of a pipe whose reader is gone. */
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[1], 6, RD_WRITABLE, 0), 0);
	ev = next_event(c);
	assert_int_equal(ev.token, 6);
	assert_true(ev.ready & RD_WRITABLE);
	close(p[0]);
	ev = next_event(c);
	assert_int_equal(ev.token, 6);
	assert_true(ev.ready & RD_ERROR);
	assert_true(ev.ready & RD_WRITE_CLOSED);
	close(p[1]);

	/* The read end of a pipe whose writer is gone: readable and read-closed. */
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 8, RD_READABLE, 0), 0);
	close(p[1]);
	ev = next_event(c);
	assert_int_equal(ev.token, 8);
	assert_true(ev.ready & RD_READ_CLOSED);

	rd_close(c);
	close(s);
	close(p[0]);
}

static void test_oneshot(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 9, RD_READABLE, RD_ONESHOT), 0);
	put_byte(p[1]);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 9);
	/* Disarmed: more data brings nothing until re-armed. */
	put_byte(p[1]);
	expect_quiet(c);
	/* Re-arming an fd that is still ready reports it at once. */
	assert_int_equal(rd_rearm(c, 9), 0);
	ev = next_event(c);
	assert_int_equal(ev.token, 9);
	assert_true(ev.ready & RD_READABLE);
	/* Re-armed after draining: quiet until the next byte. */
	drain(p[0]);
	assert_int_equal(rd_rearm(c, 9), 0);
	expect_quiet(c);
	put_byte(p[1]);
	ev = next_event(c);
	assert_int_equal(ev.token, 9);

	rd_close(c);
	close(p[0]);
	close(p[1]);
}

static void test_modify(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int sp[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(rd_add(c, sp[0], 3, RD_READABLE, 0), 0);
	expect_quiet(c);
	/* Now writable interest: the socket is writable, so an event follows the reply. */
	assert_int_equal(rd_modify(c, 3, RD_WRITABLE, 0), 0);
	struct rd_event ev = next_event(c);
	assert_int_equal(ev.token, 3);
	assert_true(ev.ready & RD_WRITABLE);
	/* Back to readable only: data makes a readable event with no writable bit. */
	assert_int_equal(rd_modify(c, 3, RD_READABLE, 0), 0);
	assert_int_equal(write(sp[1], "z", 1), 1);
	ev = next_event(c);
	assert_int_equal(ev.token, 3);
	assert_int_equal(ev.ready & (RD_READABLE | RD_WRITABLE), RD_READABLE);
	/* Modify an unknown token, and interest 0. */
	assert_int_equal(rd_modify(c, 4, RD_READABLE, 0), -ENOENT);
	assert_int_equal(rd_modify(c, 3, 0, 0), -EINVAL);
	/* Reserved bits are refused by the library before they reach the daemon. */
	assert_int_equal(rd_modify(c, 3, 0x80, 0), -EINVAL);
	assert_int_equal(rd_modify(c, 3, RD_READABLE, 0x100), -EINVAL);

	rd_close(c);
	close(sp[0]);
	close(sp[1]);
}

/* A modify of many oneshot registrations takes several requests in flight; the daemon
 * answers each and may report what is ready under the new mode before the later requests
 * are answered. Every fd is still readable, so each token must be reported exactly once
 * after the call: none of the new events may be dropped as stale (a disarmed oneshot
 * would then wait forever), and none of the old ones kept. */
static void test_modify_batch_many_oneshot(void **state)
{
	(void)state;
	enum { N = 6000 };
	rd_client *c = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	put_byte(p[1]);
	static struct rd_entry e[N];
	static unsigned char seen[N];
	for (int i = 0; i < N; i++) {
		int fd = fcntl(p[0], F_DUPFD_CLOEXEC, 0);
		assert_true(fd >= 0);
		e[i] = (struct rd_entry){ .fd = fd, .token = (uint64_t)i, .interest = RD_READABLE,
					  .flags = RD_ONESHOT };
	}
	assert_int_equal(rd_add_batch(c, e, N), N);
	struct rd_event ev[512];
	int distinct = 0;
	memset(seen, 0, sizeof(seen));
	while (distinct < N) {
		int n = rd_wait(c, ev, 512, PATIENCE_MS);
		assert_true(n > 0);
		for (int i = 0; i < n; i++)
			if (ev[i].token < N && !seen[ev[i].token]++)
				distinct++;
	}
	expect_quiet(c); /* every one disarmed */

	/* Whether the daemon answers a later request before it sends the events of an
	 * earlier one depends on timing: several rounds, so a regression shows. */
	for (int round = 0; round < 8; round++) {
		assert_int_equal(rd_modify_batch(c, e, N), N);
		memset(seen, 0, sizeof(seen));
		distinct = 0;
		while (distinct < N) {
			int n = rd_wait(c, ev, 512, PATIENCE_MS);
			if (n == 0)
				fail_msg("round %d: after rd_modify_batch of %d, %d tokens reported, "
					 "then nothing", round, N, distinct);
			assert_true(n > 0);
			for (int i = 0; i < n; i++) {
				assert_true(ev[i].token < N);
				if (seen[ev[i].token]++)
					fail_msg("round %d: token %llu reported twice", round,
						 (unsigned long long)ev[i].token);
				distinct++;
			}
		}
	}
	expect_quiet(c);

	rd_close(c);
	for (int i = 0; i < N; i++)
		close(e[i].fd);
	close(p[0]);
	close(p[1]);
}

/* Once a delete's reply has arrived no event for its token follows: checked on the raw
 * protocol (nothing after the REPLY) and through the library (nothing after rd_delete). */
static void test_no_event_after_delete(void **state)
{
	(void)state;
	enum { N = 64 };
	int p[N][2];
	int rfd[N];
	for (int i = 0; i < N; i++) {
		assert_int_equal(pipe2(p[i], O_NONBLOCK | O_CLOEXEC), 0);
		rfd[i] = p[i][0];
	}

	/* Raw: ADD all, make them ready, DEL all in one request, then make them ready again. */
	int s = rdt_connect(rdt_suite.sock);
	assert_true(s >= 0);
	assert_int_equal(rdt_hello(s), 0);
	struct rdp_add_entry e[N];
	uint64_t tok[N];
	for (int i = 0; i < N; i++) {
		e[i] = (struct rdp_add_entry){ .token = 1000 + i, .interest = RDP_INTEREST_READABLE };
		tok[i] = 1000 + i;
	}
	static uint8_t buf[RDP_MSG_MAX];
	size_t len = rdp_encode_add(buf, sizeof(buf), 10, e, N);
	assert_int_equal(rdt_send(s, buf, len, rfd, N), 0);
	for (int i = 0; i < N; i++)
		put_byte(p[i][1]);
	len = rdp_encode_tokens(buf, sizeof(buf), RDP_MSG_DEL, 11, tok, N);
	assert_int_equal(rdt_send(s, buf, len, NULL, 0), 0);
	bool del_replied = false;
	while (!del_replied) {
		int n = rdt_recv(s, buf, sizeof(buf), PATIENCE_MS);
		assert_true(n > 0);
		struct rdp_hdr h;
		assert_int_equal(rdp_check_daemon_msg(buf, (size_t)n, 0, &h), RDP_E_NONE);
		if (h.type == RDP_MSG_REPLY && h.id == 11) {
			for (uint32_t i = 0; i < h.count; i++)
				assert_int_equal(rdp_status_get(buf, i), 0);
			del_replied = true;
		}
	}
	for (int i = 0; i < N; i++)
		put_byte(p[i][1]);
	/* A CONTROL round trip: everything the daemon sent before its answer has arrived. */
	len = rdp_encode_json(buf, sizeof(buf), RDP_MSG_CONTROL, 12, "{\"command\":\"status\"}", 20);
	assert_int_equal(rdt_send(s, buf, len, NULL, 0), 0);
	for (;;) {
		int n = rdt_recv(s, buf, sizeof(buf), PATIENCE_MS);
		assert_true(n > 0);
		struct rdp_hdr h;
		assert_int_equal(rdp_check_daemon_msg(buf, (size_t)n, 0, &h), RDP_E_NONE);
		assert_int_not_equal(h.type, RDP_MSG_EVENTS);
		if (h.type == RDP_MSG_CONTROL_REPLY)
			break;
	}
	close(s);

	/* Library: events already received for a token are dropped by rd_delete. */
	rd_client *c = open_client();
	struct rd_entry re[N];
	for (int i = 0; i < N; i++)
		re[i] = (struct rd_entry){ .fd = rfd[i], .token = 2000 + i, .interest = RD_READABLE };
	assert_int_equal(rd_add_batch(c, re, N), N);
	/* Pipes still hold data from above: every ADD reports readable right away. Wait for
	 * the first so that the others are likely in flight while we delete. */
	struct rd_event ev = next_event(c);
	assert_true(ev.token >= 2000 && ev.token < 2000 + N);
	for (int i = 0; i < N; i++)
		put_byte(p[i][1]);
	assert_int_equal(rd_delete_batch(c, re, N), N);
	for (int i = 0; i < N; i++)
		put_byte(p[i][1]);
	expect_quiet(c);
	rd_close(c);
	for (int i = 0; i < N; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
}

/* The daemon's copy keeps the open file description alive: the peer of a registered
 * socket sees EOF only once the registration is deleted, or its client disconnects. */
static bool peer_sees_eof(int peer, int timeout_ms)
{
	struct pollfd pf = { .fd = peer, .events = POLLIN };
	if (poll(&pf, 1, timeout_ms) <= 0)
		return false;
	char b;
	return read(peer, &b, 1) == 0;
}

static void test_peer_eof_after_delete_or_disconnect(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int sp[2], sq[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sq), 0);
	assert_int_equal(rd_add(c, sp[0], 1, RD_READABLE, 0), 0);
	assert_int_equal(rd_add(c, sq[0], 2, RD_READABLE, 0), 0);
	close(sp[0]);
	close(sq[0]);
	assert_false(peer_sees_eof(sp[1], QUIET_MS));
	assert_int_equal(rd_delete(c, 1), 0);
	assert_true(peer_sees_eof(sp[1], PATIENCE_MS));

	assert_false(peer_sees_eof(sq[1], QUIET_MS));
	rd_close(c);
	assert_true(peer_sees_eof(sq[1], PATIENCE_MS));
	close(sp[1]);
	close(sq[1]);
}

/* A client that registers many fds and never reads: its events stay coalesced in the
 * daemon (one per registration), the daemon's memory stays flat, and another client is
 * served all along. */
static void test_never_reading_client(void **state)
{
	(void)state;
	enum { N = 500, ROUNDS = 40 };
	int efd[N];
	struct rd_entry e[N];
	rd_client *lazy = open_client();
	for (int i = 0; i < N; i++) {
		efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
		e[i] = (struct rd_entry){ .fd = efd[i], .token = (uint64_t)i, .interest = RD_READABLE };
	}
	assert_int_equal(rd_add_batch(lazy, e, N), N);

	rd_client *busy = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(busy, p[0], 77, RD_READABLE, 0), 0);

	long rss0 = 0;
	uint64_t one = 1;
	for (int round = 0; round < ROUNDS; round++) {
		for (int i = 0; i < N; i++)
			assert_int_equal(write(efd[i], &one, sizeof(one)), sizeof(one));
		put_byte(p[1]);
		struct rd_event ev = next_event(busy);
		assert_int_equal(ev.token, 77);
		if (round == 4)
			rss0 = rdt_rss_kib(rdt_suite.pid);
	}
	long rss1 = rdt_rss_kib(rdt_suite.pid);
	assert_true(rss0 > 0 && rss1 > 0);
	/* 35 more rounds of 500 edges each: O(events) growth would be megabytes. */
	if (rss1 - rss0 > 512)
		fail_msg("daemon RSS grew by %ld KiB while a client did not read", rss1 - rss0);

	/* When the lazy client reads at last, every registration is reported. */
	static struct rd_event evs[4096];
	static bool seen[N];
	int total = 0, distinct = 0;
	for (;;) {
		int n = rd_wait(lazy, evs, 4096, QUIET_MS);
		assert_true(n >= 0);
		if (n == 0)
			break;
		for (int i = 0; i < n; i++) {
			assert_true(evs[i].token < N);
			assert_true(evs[i].ready & RD_READABLE);
			if (!seen[evs[i].token]) {
				seen[evs[i].token] = true;
				distinct++;
			}
		}
		total += n;
		assert_true(total <= N * ROUNDS);
	}
	assert_int_equal(distinct, N);
	rd_close(lazy);
	rd_close(busy);
	for (int i = 0; i < N; i++)
		close(efd[i]);
	close(p[0]);
	close(p[1]);
}

/* 100 clients with 100 registrations each: everyone gets all of its events, and only its
 * own. Each client registers 10 eventfds 10 times, under 100 tokens. */
static void test_many_clients(void **state)
{
	(void)state;
	enum { CLIENTS = 100, FDS = 10, DUPS = 10 };
	static rd_client *cl[CLIENTS];
	static int efd[CLIENTS][FDS];
	for (int c = 0; c < CLIENTS; c++) {
		cl[c] = open_client();
		struct rd_entry e[FDS * DUPS];
		for (int f = 0; f < FDS; f++) {
			efd[c][f] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			assert_true(efd[c][f] >= 0);
			for (int k = 0; k < DUPS; k++)
				e[f * DUPS + k] = (struct rd_entry){
					.fd = efd[c][f],
					.token = (uint64_t)c << 32 | (uint64_t)(f * DUPS + k),
					.interest = RD_READABLE,
				};
		}
		assert_int_equal(rd_add_batch(cl[c], e, FDS * DUPS), FDS * DUPS);
	}
	uint64_t one = 1;
	for (int c = 0; c < CLIENTS; c++)
		for (int f = 0; f < FDS; f++)
			assert_int_equal(write(efd[c][f], &one, sizeof(one)), sizeof(one));
	for (int c = 0; c < CLIENTS; c++) {
		bool seen[FDS * DUPS] = { false };
		int distinct = 0;
		struct rd_event evs[256];
		while (distinct < FDS * DUPS) {
			int n = rd_wait(cl[c], evs, 256, PATIENCE_MS);
			assert_true(n > 0);
			for (int i = 0; i < n; i++) {
				assert_int_equal(evs[i].token >> 32, c);
				uint32_t t = (uint32_t)evs[i].token;
				assert_true(t < FDS * DUPS);
				if (!seen[t]) {
					seen[t] = true;
					distinct++;
				}
			}
		}
	}
	char *status = NULL;
	assert_int_equal(rd_control(cl[0], "{\"command\":\"status\"}", &status), 0);
	assert_non_null(strstr(status, "\"registrations\":10000"));
	free(status);
	for (int c = 0; c < CLIENTS; c++) {
		rd_close(cl[c]);
		for (int f = 0; f < FDS; f++)
			close(efd[c][f]);
	}
}

static void test_control_status(void **state)
{
	(void)state;
	rd_client *c = open_client();
	char *s = NULL;
	assert_int_equal(rd_control(c, "{\"command\":\"status\"}", &s), 0);
	assert_non_null(strstr(s, "\"ok\":true"));
	char pid[32];
	snprintf(pid, sizeof(pid), "\"pid\":%d,", (int)rdt_suite.pid);
	assert_non_null(strstr(s, pid));
	free(s);
	assert_int_equal(rd_control(c, "{\"command\":\"nope\"}", &s), 0);
	assert_non_null(strstr(s, "\"ok\":false"));
	free(s);
	/* Bad JSON is an answer, not a disconnect. */
	assert_int_equal(rd_control(c, "{not json", &s), 0);
	assert_non_null(strstr(s, "invalid JSON"));
	free(s);
	assert_int_equal(rd_control(c, "{\"command\":\"status\"}", &s), 0);
	free(s);
	rd_close(c);

	/* readyctl status --json goes through the same control plane. */
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s status --json",
		 getenv("READYCTL_BIN") ? getenv("READYCTL_BIN") : "build/bin/readyctl", rdt_suite.sock);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	char line[1024] = "";
	assert_non_null(fgets(line, sizeof(line), f));
	assert_int_equal(pclose(f), 0);
	assert_non_null(strstr(line, pid));
	assert_non_null(strstr(line, "\"events_delivered\":"));
}

/* A stale socket file is replaced; a live daemon on the path is refused. */
static void test_stale_and_live_socket(void **state)
{
	(void)state;
	const char *bin = getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd";
	char cmd[512];

	/* Live: a second daemon on our daemon's socket exits 1, and ours keeps serving. */
	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s --log-level err 2>/dev/null", bin,
		 rdt_suite.sock);
	int st = system(cmd);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	rd_client *c = open_client();
	rd_close(c);

	/* Stale: a socket file nobody listens on. */
	char dir[] = "/tmp/readyd-stale-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[108];
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, path);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	struct rdt_daemon d2;
	(void)d2;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(bin, bin, "--socket", path, "--log-level", "err", (char *)NULL);
		_exit(127);
	}
	rd_client *c2 = NULL;
	int r = -1;
	for (int i = 0; i < 500 && r < 0; i++) {
		r = rd_open(&c2, path);
		if (r < 0)
			usleep(10000);
	}
	assert_int_equal(r, 0);
	rd_close(c2);
	kill(pid, SIGTERM);
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* A clean stop removes the socket it bound. */
	struct stat sb;
	assert_int_equal(stat(path, &sb), -1);
	rmdir(dir);

	/* A path that is not a socket is never replaced. */
	char file[] = "/tmp/readyd-notsock-XXXXXX";
	int ffd = mkstemp(file);
	assert_true(ffd >= 0);
	close(ffd);
	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s --log-level err 2>/dev/null", bin, file);
	st = system(cmd);
	assert_int_equal(WEXITSTATUS(st), 1);
	assert_int_equal(stat(file, &sb), 0);
	unlink(file);
}

/* The echo-server example serves TCP on loopback with every wait going through readyd. */
static void test_echo_example(void **state)
{
	(void)state;
	const char *bin = getenv("ECHO_BIN") ? getenv("ECHO_BIN") : "build/bin/echo-server";
	int out[2];
	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(out[1], STDOUT_FILENO);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		/* Bounded: a server that never says where it listens ends the test. */
		execlp("timeout", "timeout", "60", bin, "--socket", rdt_suite.sock, "--port", "0",
		       (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	FILE *f = fdopen(out[0], "r");
	assert_non_null(f);
	int port = 0;
	assert_int_equal(fscanf(f, "echo-server: listening on 127.0.0.1:%d", &port), 1);

	enum { CONNS = 8, BYTES = 200000 };
	static char sendbuf[BYTES], recvbuf[BYTES];
	for (int i = 0; i < BYTES; i++)
		sendbuf[i] = (char)(i * 7 + 3);
	int s[CONNS];
	for (int i = 0; i < CONNS; i++)
		s[i] = tcp_connect((uint16_t)port, false);
	for (int i = 0; i < CONNS; i++) {
		/* Write and read in turns so neither side's buffers fill. */
		size_t sent = 0, got = 0;
		while (got < BYTES) {
			if (sent < BYTES) {
				size_t k = BYTES - sent < 8192 ? BYTES - sent : 8192;
				ssize_t w = write(s[i], sendbuf + sent, k);
				assert_true(w > 0);
				sent += (size_t)w;
			}
			struct pollfd pf = { .fd = s[i], .events = POLLIN };
			assert_int_equal(poll(&pf, 1, PATIENCE_MS), 1);
			ssize_t n = read(s[i], recvbuf + got, BYTES - got);
			assert_true(n > 0);
			got += (size_t)n;
		}
		assert_memory_equal(sendbuf, recvbuf, BYTES);
		close(s[i]);
	}
	kill(pid, SIGTERM);
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	fclose(f);
}

/* Run readyd with args, stderr captured; returns its exit status and its first stderr
 * line in 'line'. With 'journal', JOURNAL_STREAM names the captured stderr. */
static int run_readyd(const char *args, bool journal, char *line, size_t cap)
{
	const char *bin = getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd";
	int err[2];
	assert_int_equal(pipe2(err, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(err[1], STDERR_FILENO);
		if (journal) {
			struct stat st;
			char v[64];
			fstat(STDERR_FILENO, &st);
			snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
				 (unsigned long long)st.st_ino);
			setenv("JOURNAL_STREAM", v, 1);
		} else
			unsetenv("JOURNAL_STREAM");
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "exec timeout 30 %s %s >/dev/null", bin, args);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(err[1]);
	FILE *f = fdopen(err[0], "r");
	line[0] = '\0';
	if (!fgets(line, (int)cap, f))
		line[0] = '\0';
	char rest[512];
	while (fgets(rest, sizeof(rest), f))
		;
	fclose(f);
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* Startup errors are clear and exit non-zero; under the journal, lines carry <N>. */
static void test_startup_errors_and_journal(void **state)
{
	(void)state;
	char line[512], args[512];
	char dir[] = "/tmp/readyd-cfg-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char cfg[128], sock[128];
	snprintf(cfg, sizeof(cfg), "%s/readyd.json", dir);
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);

	/* A socket path too long for sockaddr_un, logged at err level: <3> in the journal. */
	char longpath[200];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	snprintf(args, sizeof(args), "--socket %s", longpath);
	assert_int_equal(run_readyd(args, true, line, sizeof(line)), 1);
	assert_true(strncmp(line, "<3>", 3) == 0);
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "readyd: err: socket path too long"));

	/* Bad JSON: line and column. */
	write_file(cfg, "{\n  \"log_level\": \"info\",\n  oops\n}\n");
	snprintf(args, sizeof(args), "--socket %s --config %s", sock, cfg);
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "line 3"));
	/* Unknown key, wrong type, out of range, duplicate key: each named. */
	write_file(cfg, "{\"limits\": {\"registrations_per_clint\": 5}}");
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "limits.registrations_per_clint"));
	/* Key errors say where the key stands too. */
	write_file(cfg, "{\n  \"log_level\": \"info\",\n  \"limits\": {\n    \"max_fds\": 5\n  }\n}\n");
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "line 4, column 5: key \"limits.max_fds\""));
	write_file(cfg, "{\"log_level\": 7}");
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "log_level"));
	write_file(cfg, "{\"limits\": {\"clients_per_uid\": 0}}");
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "limits.clients_per_uid"));
	write_file(cfg, "{\"socket\": \"/a\", \"socket\": \"/b\"}");
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_non_null(strstr(line, "duplicate"));
	/* A missing --config file is an error; usage errors exit 2. */
	snprintf(args, sizeof(args), "--socket %s --config %s/none.json", sock, dir);
	assert_int_equal(run_readyd(args, false, line, sizeof(line)), 1);
	assert_int_equal(run_readyd("--no-such-option", false, line, sizeof(line)), 2);
	assert_int_equal(run_readyd("--log-level loud", false, line, sizeof(line)), 2);
	assert_int_equal(run_readyd("--version", false, line, sizeof(line)), 0);

	unlink(cfg);
	rmdir(dir);
}

/* At the daemon's fd limit, ADD entries get EMFILE and new connections a clear refusal;
 * the daemon keeps serving, and accepts again once fds are released. The daemon runs
 * under RLIMIT_NOFILE 400 here, so its limit is 400 - 320 = 80 fds. */
static void test_fd_limit(void **state)
{
	(void)state;
	struct rdt_daemon d2;
	setenv("READYD_TEST_NOFILE", "400", 1);
	int r = rdt_daemon_start(&d2, NULL);
	unsetenv("READYD_TEST_NOFILE");
	assert_int_equal(r, 0);
	struct rdt_fds base;
	rdt_fds_snapshot(&base, d2.pid);

	rd_client *a = NULL;
	assert_int_equal(rd_open(&a, d2.sock), 0);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	enum { N = 200 };
	struct rd_entry e[N];
	for (int i = 0; i < N; i++)
		e[i] = (struct rd_entry){ .fd = efd, .token = (uint64_t)i, .interest = RD_READABLE };
	int ok = rd_add_batch(a, e, N);
	assert_true(ok > 0 && ok < N);
	for (int i = 0; i < N; i++)
		assert_int_equal(e[i].status, i < ok ? 0 : -EMFILE);

	rd_client *b = NULL;
	assert_int_equal(rd_open(&b, d2.sock), -EMFILE);

	/* The client at the limit is still served. */
	uint64_t one = 1;
	assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
	struct rd_event ev[N];
	assert_true(rd_wait(a, ev, N, PATIENCE_MS) > 0);

	/* Release some: a new client gets in and can register. */
	assert_int_equal(rd_delete_batch(a, e, 10), 10);
	assert_int_equal(rd_open(&b, d2.sock), 0);
	assert_int_equal(rd_add(b, efd, 1, RD_READABLE, 0), 0);
	rd_close(b);
	rd_close(a);
	close(efd);
	rdt_fds_assert_back(&base, d2.pid);
	assert_int_equal(rdt_daemon_stop(&d2), 0);
}

static json_t *control(rd_client *c, const char *req)
{
	char *text = NULL;
	assert_int_equal(rd_control(c, req, &text), 0);
	json_t *j = json_loads(text, 0, NULL);
	assert_non_null(j);
	free(text);
	return j;
}

static bool has_string(json_t *arr, const char *v)
{
	size_t i;
	json_t *x;
	json_array_foreach(arr, i, x) if (strcmp(json_string_value(x), v) == 0) return true;
	return false;
}

/* The control plane reports clients, their registrations and the limits; an admin may
 * disconnect a client, and only that client is affected. */
static void test_control_plane(void **state)
{
	(void)state;
	rd_client *a = open_client(), *b = open_client(), *ctl = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_int_equal(rd_add(a, p[0], 12345678901234ull, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(a, efd, 2, RD_READABLE | RD_WRITABLE, 0), 0);
	assert_int_equal(rd_add(b, efd, 3, RD_READABLE, 0), 0);

	json_t *j = control(ctl, "{\"command\":\"clients\"}");
	assert_true(json_is_true(json_object_get(j, "ok")));
	json_t *list = json_object_get(j, "clients");
	assert_int_equal(json_array_size(list), 3);
	json_int_t id_a = 0, id_b = 0;
	size_t i;
	json_t *c;
	json_array_foreach(list, i, c) {
		assert_int_equal(json_integer_value(json_object_get(c, "pid")), getpid());
		assert_string_equal(json_string_value(json_object_get(c, "comm")), "test-daemon");
		json_int_t regs = json_integer_value(json_object_get(c, "registrations"));
		if (regs == 2)
			id_a = json_integer_value(json_object_get(c, "id"));
		else if (regs == 1)
			id_b = json_integer_value(json_object_get(c, "id"));
	}
	assert_true(id_a > 0 && id_b > 0);
	json_decref(j);

	char req[128];
	snprintf(req, sizeof(req), "{\"command\":\"registrations\",\"client\":%lld}", (long long)id_a);
	j = control(ctl, req);
	assert_int_equal(json_integer_value(json_object_get(j, "total")), 2);
	json_array_foreach(json_object_get(j, "registrations"), i, c) {
		const char *tok = json_string_value(json_object_get(c, "token"));
		if (strcmp(tok, "12345678901234") == 0) {
			assert_string_equal(json_string_value(json_object_get(c, "fd_type")), "pipe");
			assert_string_equal(json_string_value(json_object_get(c, "mode")), "oneshot");
			assert_true(has_string(json_object_get(c, "interest"), "readable"));
		} else {
			assert_string_equal(tok, "2");
			assert_string_equal(json_string_value(json_object_get(c, "fd_type")), "eventfd");
			assert_true(has_string(json_object_get(c, "interest"), "writable"));
		}
	}
	json_decref(j);

	j = control(ctl, "{\"command\":\"limits\"}");
	assert_int_equal(json_integer_value(json_object_get(j, "registrations_per_client")), 65536);
	assert_int_equal(json_integer_value(json_object_get(j, "batch_entries")), 253);
	json_decref(j);

	/* Disconnect a: its calls fail, b still gets its events. */
	snprintf(req, sizeof(req), "{\"command\":\"disconnect\",\"client\":%lld}", (long long)id_a);
	j = control(ctl, req);
	assert_true(json_is_true(json_object_get(j, "ok")));
	json_decref(j);
	/* Told so with an ERROR: the library does not take it for a restart. */
	assert_int_equal(rd_delete(a, 2), -ECONNABORTED);
	uint64_t one = 1;
	assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
	struct rd_event ev = next_event(b);
	assert_int_equal(ev.token, 3);
	j = control(ctl, req);
	assert_false(json_is_true(json_object_get(j, "ok")));
	json_decref(j);

	rd_close(a);
	rd_close(b);

	/* A client that is not reading has a backlog in the way: the ERROR still reaches it
	 * after what it had not read, so it knows not to reconnect. */
	int raw = rdt_connect(rdt_suite.sock);
	assert_true(raw >= 0);
	assert_int_equal(rdt_hello(raw), 0);
	static uint8_t buf[RDP_MSG_MAX];
	int sent = 0;
	for (; sent < 20000; sent++) {
		size_t len = rdp_encode_json(buf, sizeof(buf), RDP_MSG_CONTROL, (uint32_t)sent + 1,
					     "{\"command\":\"limits\"}", 19);
		if (send(raw, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
			break; /* the daemon stopped reading us: its answers are piled up */
	}
	assert_true(sent > 100);
	j = control(ctl, "{\"command\":\"clients\"}");
	json_int_t id_raw = 0;
	/* The raw client connected last: the highest id (b may still be closing). */
	json_array_foreach(json_object_get(j, "clients"), i, c) {
		json_int_t id = json_integer_value(json_object_get(c, "id"));
		if (!json_is_true(json_object_get(c, "self")) && id > id_raw)
			id_raw = id;
	}
	json_decref(j);
	assert_true(id_raw > 0);
	snprintf(req, sizeof(req), "{\"command\":\"disconnect\",\"client\":%lld}", (long long)id_raw);
	j = control(ctl, req);
	assert_true(json_is_true(json_object_get(j, "ok")));
	json_decref(j);
	int reason = -1, n = 0;
	for (int k = 0; k < 100000; k++) {
		n = rdt_recv(raw, buf, sizeof(buf), PATIENCE_MS);
		/* The daemon closed with our requests unread: the kernel says so first, and
		 * what it had sent can still be read after. */
		if (n == -ECONNRESET)
			continue;
		if (n <= 0)
			break;
		struct rdp_hdr h;
		assert_int_equal(rdp_check_daemon_msg(buf, (size_t)n, 0, &h), RDP_E_NONE);
		if (h.type == RDP_MSG_ERROR) {
			uint32_t err, rs;
			const char *text;
			size_t tl;
			rdp_error_get(buf, (size_t)n, &err, &rs, &text, &tl);
			assert_int_equal(err, ECONNABORTED);
			reason = (int)rs;
		}
	}
	assert_int_equal(reason, RDP_E_DISCONNECTED);
	close(raw);
	rd_close(ctl);
	close(p[0]);
	close(p[1]);
	close(efd);
}

/* As user nobody: only its own connections are visible, admin actions are refused; and
 * a policy that allows only root refuses nobody before reading anything from it. */
static void test_control_plane_permissions(void **state)
{
	(void)state;
	if (geteuid() != 0)
		skip();
	struct rdt_daemon d2;
	assert_int_equal(rdt_daemon_start(&d2, "{\"policy\": {\"allow_uids\": [0]}}"), 0);
	assert_int_equal(chmod(rdt_suite.dir, 0755), 0);
	assert_int_equal(chmod(d2.dir, 0755), 0);
	rd_client *root = open_client();

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		rd_client *c = NULL, *r = NULL;
		if (rd_open(&c, rdt_suite.sock) < 0)
			_exit(11);
		char *t = NULL;
		if (rd_control(c, "{\"command\":\"clients\"}", &t) < 0 || strstr(t, "\"uid\":0,"))
			_exit(12); /* root's connection must not show */
		free(t);
		if (rd_control(c, "{\"command\":\"disconnect\",\"client\":1}", &t) < 0 ||
		    !strstr(t, "permission denied"))
			_exit(13);
		free(t);
		rd_close(c);
		/* The policy allows uid 0 only. */
		if (rd_open(&r, d2.sock) != -EACCES)
			_exit(14);
		_exit(0);
	}
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* Root is allowed, and still served on both daemons. */
	rd_client *r2 = NULL;
	assert_int_equal(rd_open(&r2, d2.sock), 0);
	rd_close(r2);
	char *t = NULL;
	assert_int_equal(rd_control(root, "{\"command\":\"status\"}", &t), 0);
	free(t);
	rd_close(root);
	assert_int_equal(rdt_daemon_stop(&d2), 0);
	assert_int_equal(chmod(rdt_suite.dir, 0700), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_edge_pipe, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_edge_socketpair_and_eventfd, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_tcp_loopback, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_error_and_write_closed, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_oneshot, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_modify, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_modify_batch_many_oneshot, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_no_event_after_delete, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_peer_eof_after_delete_or_disconnect, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_never_reading_client, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_many_clients, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_control_status, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_stale_and_live_socket, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_echo_example, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_startup_errors_and_journal, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_fd_limit, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_control_plane, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_control_plane_permissions, rdt_test_setup, rdt_test_teardown),
	};
	return cmocka_run_group_tests_name("readyd", tests, rdt_suite_setup, rdt_suite_teardown);
}
