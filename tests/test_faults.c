/* Allocation failure at every allocation on the request path, against a daemon built with
 * -DRDD_FAULT_INJECTION (make check-faults): for each n, the nth allocation after the
 * control command "fail-alloc" fails once, while a client runs a full round of requests
 * (ADD of 300 fds in two requests, MOD, REARM, DEL, control, a new connection). Every
 * call answers (0 or an errno, or the connection ends cleanly), the daemon survives, a
 * bystander keeps getting its events, and no fd is left behind. Skips with a normal
 * daemon, which does not know the command. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "harness.h"

#define PATIENCE_MS 5000
#define ROUNDS 120

static bool call_ok(int r)
{
	/* What a caller may see when the daemon ran out of memory for it. */
	return r >= 0 || r == -ENOMEM || r == -ECONNRESET || r == -EPIPE;
}

static void one_round(const char *sock, int pfd)
{
	rd_client *c = NULL;
	int r = rd_open(&c, sock);
	assert_true(call_ok(r));
	if (r < 0)
		return;
	struct rd_entry e[300];
	for (int i = 0; i < 300; i++)
		e[i] = (struct rd_entry){ .fd = pfd, .token = (uint64_t)i, .interest = RD_READABLE,
					  .flags = RD_ONESHOT };
	assert_true(call_ok(rd_add_batch(c, e, 300)));
	assert_true(call_ok(rd_modify_batch(c, e, 10)));
	assert_true(call_ok(rd_rearm_batch(c, e + 10, 10)));
	assert_true(call_ok(rd_delete_batch(c, e + 20, 10)));
	char *text = NULL;
	r = rd_control(c, "{\"command\":\"clients\"}", &text);
	assert_true(call_ok(r));
	if (r == 0)
		free(text);
	rd_close(c);
}

static void test_every_allocation_fails_once(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, NULL), 0);
	rd_client *ctl = NULL, *by = NULL;
	assert_int_equal(rd_open(&ctl, d.sock), 0);
	char *text = NULL;
	assert_int_equal(rd_control(ctl, "{\"command\":\"fail-alloc\",\"after\":0}", &text), 0);
	bool supported = strstr(text, "\"ok\":true") != NULL;
	free(text);
	if (!supported) {
		rd_close(ctl);
		assert_int_equal(rdt_daemon_stop(&d), 0);
		skip();
	}
	assert_int_equal(rd_open(&by, d.sock), 0);
	int bp[2], p[2];
	assert_int_equal(pipe2(bp, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(by, bp[0], 7, RD_READABLE, 0), 0);
	int idle = rdt_count_fds(d.pid);

	for (int n = 1; n <= ROUNDS; n++) {
		char req[64];
		snprintf(req, sizeof(req), "{\"command\":\"fail-alloc\",\"after\":%d}", n);
		int r = rd_control(ctl, req, &text);
		assert_true(call_ok(r));
		if (r == 0)
			free(text);
		one_round(d.sock, p[0]);
		/* Disarm what was not used, then check the daemon and the bystander. */
		r = rd_control(ctl, "{\"command\":\"fail-alloc\",\"after\":0}", &text);
		assert_int_equal(r, 0);
		free(text);
		assert_int_equal(kill(d.pid, 0), 0);
		char b[8];
		while (read(bp[0], b, sizeof(b)) > 0)
			;
		assert_int_equal(write(bp[1], "x", 1), 1);
		struct rd_event ev;
		assert_int_equal(rd_wait(by, &ev, 1, PATIENCE_MS), 1);
		assert_int_equal(ev.token, 7);
		assert_int_equal(rdt_wait_fds(d.pid, idle), idle);
	}
	rd_close(by);
	rd_close(ctl);
	close(bp[0]);
	close(bp[1]);
	close(p[0]);
	close(p[1]);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_allocation_fails_once, rdt_fd_setup,
						rdt_fd_teardown),
	};
	return cmocka_run_group_tests_name("faults", tests, NULL, NULL);
}
