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
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* Arm the daemon's allocation countdown: the nth allocation from now fails (0: none).
 * Returns whether the answer said ok (it does not when its own allocations ran out). */
static bool fail_alloc(rd_client *ctl, int n)
{
	char req[64], *text = NULL;
	snprintf(req, sizeof(req), "{\"command\":\"fail-alloc\",\"after\":%d}", n);
	int r = rd_control(ctl, req, &text);
	assert_true(call_ok(r));
	bool ok = r == 0 && strstr(text, "\"ok\":true") != NULL;
	free(text);
	return ok;
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
	if (!fail_alloc(ctl, 0)) { /* a daemon built without the hook */
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
		fail_alloc(ctl, n);
		one_round(d.sock, p[0]);
		/* Disarm what was not used (an answer that runs out of memory has used it),
		 * then check the daemon and the bystander. */
		fail_alloc(ctl, 0);
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

/* Whether the daemon's log (its stderr, sent to 'path') says 'what'. */
static bool log_says(const char *path, const char *what)
{
	char buf[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strstr(buf, what) != NULL;
}

/* The loop keeps a list of clients with work. When it cannot grow that list (out of
 * memory), a client left off it must still be served: its connection is edge-triggered
 * and may bring no other event. 100 clients, one registration each of one pipe, all
 * made ready while the daemon is stopped, so that it finds them in one epoll_wait and
 * must grow the list (64 entries until then) while the next allocation fails. The
 * countdown is set to end right after the answer to the command that sets it: the
 * smallest count whose answer does not run out of memory. */
static void test_work_list_out_of_memory(void **state)
{
	(void)state;
	enum { N = 100, MAX_K = 64 };
	signal(SIGPIPE, SIG_IGN);
	char log[] = "/tmp/readyd-faults-log-XXXXXX";
	int lf = mkstemp(log);
	assert_true(lf >= 0);
	int saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(lf, 2), 2); /* the daemon's stderr */
	struct rdt_daemon d;
	int r = rdt_daemon_start(&d, NULL);
	dup2(saved, 2);
	close(saved);
	close(lf);
	assert_int_equal(r, 0);
	rd_client *ctl = NULL, *cl[N];
	assert_int_equal(rd_open(&ctl, d.sock), 0);
	if (!fail_alloc(ctl, 0)) {
		rd_close(ctl);
		assert_int_equal(rdt_daemon_stop(&d), 0);
		unlink(log);
		skip();
	}
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(rd_open(&cl[i], d.sock), 0);
		assert_int_equal(rd_add(cl[i], p[0], 1, RD_READABLE, RD_EDGE), 0);
	}
	bool armed = false;
	for (int k = 1; k <= MAX_K && !armed; k++)
		armed = fail_alloc(ctl, k);
	assert_true(armed);
	assert_int_equal(kill(d.pid, SIGSTOP), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_int_equal(kill(d.pid, SIGCONT), 0);
	for (int i = 0; i < N; i++) {
		struct rd_event ev;
		int n = rd_wait(cl[i], &ev, 1, PATIENCE_MS);
		if (n != 1)
			fail_msg("client %d of %d got no event (%d)", i, N, n);
		assert_int_equal(ev.token, 1);
	}
	assert_true(log_says(log, "out of memory queueing work"));
	fail_alloc(ctl, 0);
	for (int i = 0; i < N; i++)
		rd_close(cl[i]);
	rd_close(ctl);
	close(p[0]);
	close(p[1]);
	assert_int_equal(rdt_daemon_stop(&d), 0);
	unlink(log);
}

/* What nobody (uid 65534) gets from rd_open on sock: 0 or -errno. */
static int nobody_opens(const char *sock)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		rd_client *c;
		if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
			_exit(100);
		int r = rd_open(&c, sock);
		if (r == 0)
			rd_close(c);
		_exit(-r);
	}
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(st));
	assert_int_not_equal(WEXITSTATUS(st), 100);
	return -WEXITSTATUS(st);
}

/* A reload that runs out of memory at any allocation keeps a policy in force: the old
 * or the new one, never none (which would admit everyone). */
static void test_reload_out_of_memory_keeps_policy(void **state)
{
	(void)state;
	if (geteuid() != 0) {
		print_message("SKIP: needs root to change uid\n");
		skip();
	}
	signal(SIGPIPE, SIG_IGN);
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, "{\"policy\":{\"allow_uids\":[0]}}"), 0);
	assert_int_equal(chmod(d.dir, 0755), 0);
	rd_client *ctl = NULL;
	assert_int_equal(rd_open(&ctl, d.sock), 0);
	if (!fail_alloc(ctl, 0)) {
		rd_close(ctl);
		assert_int_equal(rdt_daemon_stop(&d), 0);
		skip();
	}
	assert_int_equal(nobody_opens(d.sock), -EACCES);
	for (int n = 1; n <= ROUNDS / 2; n++) {
		fail_alloc(ctl, n);
		char *text = NULL;
		int r = rd_control(ctl, "{\"command\":\"reload\"}", &text);
		assert_true(call_ok(r));
		if (r == 0)
			free(text);
		fail_alloc(ctl, 0);
		if (nobody_opens(d.sock) != -EACCES)
			fail_msg("after a reload whose allocation %d failed, nobody may connect", n);
	}
	rd_close(ctl);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_allocation_fails_once, rdt_fd_setup,
						rdt_fd_teardown),
		cmocka_unit_test_setup_teardown(test_work_list_out_of_memory, rdt_fd_setup,
						rdt_fd_teardown),
		cmocka_unit_test_setup_teardown(test_reload_out_of_memory_keeps_policy, rdt_fd_setup,
						rdt_fd_teardown),
	};
	return cmocka_run_group_tests_name("faults", tests, NULL, NULL);
}
