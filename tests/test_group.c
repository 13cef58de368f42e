/* Group dispatch against a real daemon: registrations of one listening socket by several
 * clients, joined under one name; each incoming connection wakes exactly one armed
 * member, round-robin; a member that leaves holding a wakeup passes it on; and the
 * errors a caller can meet. fds of this process and of the daemon come back. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "harness.h"

#define PATIENCE_MS 5000
#define QUIET_MS 150


static int listener(uint16_t *port)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 64), 0);
	socklen_t sl = sizeof(sa);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
	*port = ntohs(sa.sin_port);
	return l;
}

static int dial(uint16_t port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return s;
}

enum { WORKERS = 4, CONNS = 24 };

/* Which worker got the wakeup; -1 when none did within PATIENCE_MS. Every other worker
 * must stay quiet. */
static int woken(rd_client **w, int n)
{
	int who = -1;
	for (int round = 0; round < PATIENCE_MS / QUIET_MS && who < 0; round++)
		for (int i = 0; i < n && who < 0; i++) {
			struct rd_event ev;
			int r = rd_wait(w[i], &ev, 1, i == 0 ? QUIET_MS : 0);
			assert_true(r >= 0);
			if (r == 1) {
				assert_int_equal(ev.token, 80);
				assert_true(ev.ready & RD_READABLE);
				who = i;
			}
		}
	for (int i = 0; i < n; i++) {
		struct rd_event ev;
		if (i != who)
			assert_int_equal(rd_wait(w[i], &ev, 1, i == 0 ? QUIET_MS : 0), 0);
	}
	return who;
}

static void test_one_wakeup_per_connection(void **state)
{
	(void)state;
	uint16_t port;
	int l = listener(&port);
	rd_client *w[WORKERS];
	for (int i = 0; i < WORKERS; i++) {
		assert_int_equal(rd_open(&w[i], rdt_suite.sock), 0);
		assert_int_equal(rd_add(w[i], l, 80, RD_READABLE, RD_ONESHOT), 0);
		assert_int_equal(rd_join(w[i], 80, "web"), 0);
	}
	int count[WORKERS] = { 0 };
	for (int k = 0; k < CONNS; k++) {
		int s = dial(port);
		int who = woken(w, WORKERS);
		assert_true(who >= 0);
		count[who]++;
		/* The woken worker accepts the connection and re-arms. */
		int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		assert_true(a >= 0);
		close(a);
		close(s);
		assert_int_equal(rd_rearm(w[who], 80), 0);
	}
	/* Round-robin among armed members: everyone served equally. */
	for (int i = 0; i < WORKERS; i++)
		assert_int_equal(count[i], CONNS / WORKERS);

	/* A backlog of 3 connections: three wakeups, one per re-arm, no herd. */
	int s[3];
	for (int k = 0; k < 3; k++)
		s[k] = dial(port);
	for (int k = 0; k < 3; k++) {
		int who = woken(w, WORKERS);
		assert_true(who >= 0);
		int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		assert_true(a >= 0);
		close(a);
		assert_int_equal(rd_rearm(w[who], 80), 0);
	}
	assert_true(woken(w, WORKERS) < 0);
	for (int k = 0; k < 3; k++)
		close(s[k]);

	/* The members are visible in the control plane. */
	char *text = NULL;
	assert_int_equal(rd_control(w[0], "{\"command\":\"registrations\"}", &text), 0);
	assert_non_null(strstr(text, "\"group\":\"web\""));
	free(text);
	for (int i = 0; i < WORKERS; i++)
		rd_close(w[i]);
	close(l);
}

/* A member that disconnects holding a wakeup passes it to another; so does one that
 * deletes its registration. Nothing is lost. */
static void test_leaving_member_passes_wakeup(void **state)
{
	(void)state;
	uint16_t port;
	int l = listener(&port);
	rd_client *w[3];
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rd_open(&w[i], rdt_suite.sock), 0);
		assert_int_equal(rd_add(w[i], l, 80, RD_READABLE, RD_ONESHOT), 0);
		assert_int_equal(rd_join(w[i], 80, "jobs"), 0);
	}
	int s = dial(port);
	int who = woken(w, 3);
	assert_true(who >= 0);
	/* It leaves without accepting: the connection is still waiting, and another member
	 * is woken for it. */
	rd_close(w[who]);
	rd_client *rest[2];
	for (int i = 0, k = 0; i < 3; i++)
		if (i != who)
			rest[k++] = w[i];
	int next = woken(rest, 2);
	assert_true(next >= 0);
	assert_int_equal(rd_delete(rest[next], 80), 0);
	int last = woken(rest + (1 - next), 1);
	assert_int_equal(last, 0);
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a >= 0);
	close(a);
	close(s);
	rd_close(rest[0]);
	rd_close(rest[1]);
	close(l);
}

static void test_join_errors(void **state)
{
	(void)state;
	uint16_t port, port2;
	int l = listener(&port), l2 = listener(&port2);
	rd_client *c;
	assert_int_equal(rd_open(&c, rdt_suite.sock), 0);
	assert_int_equal(rd_add(c, l, 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_join(c, 1, "g"), -EINVAL);     /* members are oneshot */
	assert_int_equal(rd_join(c, 99, "g"), -ENOENT);
	assert_int_equal(rd_add(c, l, 2, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 2, ""), -EINVAL);
	assert_int_equal(rd_join(c, 2, "a-name-that-is-longer-than-32-bytes"), -EINVAL);
	assert_int_equal(rd_join(c, 2, "g"), 0);
	assert_int_equal(rd_join(c, 2, "g"), -EBUSY);
	assert_int_equal(rd_modify(c, 2, RD_READABLE, RD_ONESHOT), -EBUSY);
	assert_int_equal(rd_add(c, l2, 3, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 3, "g"), -EXDEV); /* a group is one file */
	assert_int_equal(rd_add(c, l, 4, RD_READABLE | RD_WRITABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 4, "g"), -EINVAL); /* not the group's interest */
	assert_int_equal(rd_join(c, 3, "other"), 0);
	/* Names are printable ASCII; two eventfds are two files, though they share an
	 * anonymous inode. */
	assert_int_equal(rd_add(c, l2, 5, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 5, "has space"), -EINVAL);
	assert_int_equal(rd_join(c, 5, "bad\xff"), -EINVAL);
	assert_int_equal(rd_join(c, 99, "has space"), -EINVAL); /* the name first, then the token */
	int e1 = eventfd(0, EFD_CLOEXEC), e2 = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(rd_add(c, e1, 6, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(c, e2, 7, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 6, "ev"), 0);
	assert_int_equal(rd_join(c, 7, "ev"), -EXDEV);
	close(e1);
	close(e2);
	rd_close(c);
	close(l);
	close(l2);
}

/* A live upgrade keeps the group: still one wakeup per connection, round-robin. */
static void test_group_survives_upgrade(void **state)
{
	(void)state;
	uint16_t port;
	int l = listener(&port);
	rd_client *w[2];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(rd_open(&w[i], rdt_suite.sock), 0);
		assert_int_equal(rd_add(w[i], l, 80, RD_READABLE, RD_ONESHOT), 0);
		assert_int_equal(rd_join(w[i], 80, "up"), 0);
	}
	char *text = NULL;
	assert_int_equal(rd_control(w[0], "{\"command\":\"upgrade\"}", &text), 0);
	assert_non_null(strstr(text, "\"upgraded\":true"));
	free(text);
	int count[2] = { 0 };
	for (int k = 0; k < 4; k++) {
		int s = dial(port);
		int who = woken(w, 2);
		assert_true(who >= 0);
		count[who]++;
		int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		assert_true(a >= 0);
		close(a);
		close(s);
		assert_int_equal(rd_rearm(w[who], 80), 0);
	}
	assert_int_equal(count[0], 2);
	assert_int_equal(count[1], 2);

	/* A member woken before the upgrade and not re-armed still holds that wakeup
	 * after it: nobody else is woken for the same connection. */
	int s1 = dial(port);
	int who = woken(w, 2);
	assert_true(who >= 0);
	text = NULL;
	assert_int_equal(rd_control(w[who], "{\"command\":\"upgrade\"}", &text), 0);
	free(text);
	assert_true(woken(w, 2) < 0);
	int a1 = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a1 >= 0);
	close(a1);
	close(s1);
	assert_int_equal(rd_rearm(w[who], 80), 0);
	rd_close(w[0]);
	rd_close(w[1]);
	close(l);
}

/* Members that joined already woken (each added while the file was ready, then joined,
 * as the prefork example and the library's replay do), the first of which has re-armed
 * since: nobody holds the wakeup. A live upgrade keeps it that way, so the next
 * connection wakes the armed member (it used to make the disarmed one the holder, and
 * then nobody was woken). */
static void test_group_holder_kept_by_upgrade(void **state)
{
	(void)state;
	uint16_t port;
	int l = listener(&port);
	int s0 = dial(port); /* the listener is ready from here on */
	rd_client *w[2];
	for (int i = 0; i < 2; i++) {
		struct rd_event ev;
		assert_int_equal(rd_open(&w[i], rdt_suite.sock), 0);
		assert_int_equal(rd_add(w[i], l, 80, RD_READABLE, RD_ONESHOT), 0);
		assert_int_equal(rd_wait(w[i], &ev, 1, PATIENCE_MS), 1);
		assert_int_equal(ev.token, 80);
		assert_int_equal(rd_join(w[i], 80, "held"), 0); /* the first joins as holder */
	}
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a >= 0);
	close(a);
	close(s0);
	assert_int_equal(rd_rearm(w[0], 80), 0); /* the holder re-arms: nobody holds */
	char *text = NULL;
	assert_int_equal(rd_control(w[0], "{\"command\":\"upgrade\"}", &text), 0);
	assert_non_null(strstr(text, "\"upgraded\":true"));
	free(text);
	int s1 = dial(port);
	assert_int_equal(woken(w, 2), 0); /* the one armed member */
	a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(a >= 0);
	close(a);
	close(s1);
	assert_int_equal(rd_rearm(w[0], 80), 0);
	assert_int_equal(rd_rearm(w[1], 80), 0);
	rd_close(w[0]);
	rd_close(w[1]);
	close(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_one_wakeup_per_connection, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_leaving_member_passes_wakeup, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_join_errors, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_group_survives_upgrade, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_group_holder_kept_by_upgrade, rdt_test_setup, rdt_test_teardown),
	};
	return cmocka_run_group_tests_name("group", tests, rdt_suite_setup, rdt_suite_teardown);
}
