/* Limits that protect the daemon's other users: the handshake timeout for connections
 * that never say HELLO, and the per-uid registration quota. Each test checks the
 * bystander keeps being served and that fds come back. */
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "harness.h"

#define PATIENCE_MS 5000

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	return rdt_fd_setup(state);
}

static int teardown(void **state)
{
	return rdt_fd_teardown(state);
}

static void bystander_served(rd_client *c, int p[2])
{
	char b[16];
	while (read(p[0], b, sizeof(b)) > 0)
		;
	assert_int_equal(write(p[1], "x", 1), 1);
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 1);
}

/* 64 connections that never say HELLO are closed with ERROR(TIMEOUT) once the
 * handshake timeout passes; a client that did say HELLO is served throughout. */
static void test_handshake_timeout(void **state)
{
	(void)state;
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, "{\"limits\": {\"handshake_timeout_ms\": 300}}"), 0);
	int idle = rdt_count_fds(d.pid);
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, d.sock), 0);
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, 0), 0);

	enum { SILENT = 64 };
	int s[SILENT];
	for (int i = 0; i < SILENT; i++) {
		s[i] = rdt_connect(d.sock);
		assert_true(s[i] >= 0);
	}
	bystander_served(c, p);
	for (int i = 0; i < SILENT; i++)
		assert_int_equal(rdt_expect_error(s[i]), RDP_E_TIMEOUT);
	bystander_served(c, p);
	for (int i = 0; i < SILENT; i++)
		close(s[i]);
	rd_close(c);
	close(p[0]);
	close(p[1]);
	assert_int_equal(rdt_wait_fds(d.pid, idle), idle);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

/* A uid at its registration quota gets EDQUOT, and leaves room for the others (here,
 * root, an admin, is not held to it). Runs the quota'd client as nobody. */
static void test_registrations_per_uid(void **state)
{
	(void)state;
	if (geteuid() != 0)
		skip();
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, "{\"limits\": {\"registrations_per_uid\": 5}}"), 0);
	assert_int_equal(chmod(d.dir, 0755), 0);
	int idle = rdt_count_fds(d.pid);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		int q[2];
		if (pipe2(q, O_CLOEXEC) < 0)
			_exit(11);
		rd_client *a = NULL, *b = NULL;
		if (rd_open(&a, d.sock) < 0 || rd_open(&b, d.sock) < 0)
			_exit(12);
		/* Two connections of one uid share its quota of 5. */
		for (int i = 0; i < 3; i++)
			if (rd_add(a, q[0], (uint64_t)i, RD_READABLE, 0) != 0)
				_exit(13);
		for (int i = 0; i < 2; i++)
			if (rd_add(b, q[0], (uint64_t)i, RD_READABLE, 0) != 0)
				_exit(14);
		if (rd_add(b, q[0], 9, RD_READABLE, 0) != -EDQUOT)
			_exit(15);
		/* Room comes back when one goes. */
		if (rd_delete(a, 0) != 0 || rd_add(b, q[0], 9, RD_READABLE, 0) != 0)
			_exit(16);
		_exit(0);
	}
	rd_client *root = NULL;
	assert_int_equal(rd_open(&root, d.sock), 0);
	int p[2], other[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(pipe2(other, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(root, p[0], 1, RD_READABLE, 0), 0);
	for (int i = 2; i <= 20; i++) /* well past the quota: root is an admin */
		assert_int_equal(rd_add(root, other[0], (uint64_t)i, RD_READABLE, 0), 0);
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	bystander_served(root, p);
	rd_close(root);
	close(p[0]);
	close(p[1]);
	close(other[0]);
	close(other[1]);
	assert_int_equal(rdt_wait_fds(d.pid, idle), idle);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

/* allow_gids admits a peer by any of its supplementary groups, however many it has:
 * here 300, more than a first SO_PEERGROUPS buffer of 256 holds, the allowed one last.
 * A peer in none of them stays out. */
static void test_allow_gids_many_groups(void **state)
{
	(void)state;
	if (geteuid() != 0)
		skip();
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, "{\"policy\": {\"allow_gids\": [41299]}}"), 0);
	assert_int_equal(chmod(d.dir, 0755), 0);
	int idle = rdt_count_fds(d.pid);
	for (int last = 41299; last >= 41298; last--) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			gid_t g[300];
			for (int i = 0; i < 300; i++)
				g[i] = (gid_t)(last - 299 + i);
			if (setgroups(300, g) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
				_exit(10);
			rd_client *c = NULL;
			int r = rd_open(&c, d.sock);
			if (r == 0)
				rd_close(c);
			_exit(r == 0 ? 0 : r == -EACCES ? 1 : 2);
		}
		int st;
		assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
		assert_true(WIFEXITED(st));
		/* groups 41000..41299 include the allowed one; 40999..41298 do not */
		assert_int_equal(WEXITSTATUS(st), last == 41299 ? 0 : 1);
	}
	assert_int_equal(rdt_wait_fds(d.pid, idle), idle);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_handshake_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_registrations_per_uid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_allow_gids_many_groups, setup, teardown),
	};
	return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
