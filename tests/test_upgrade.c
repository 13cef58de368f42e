/* Live upgrade against a real daemon: under load, clients see no disconnect and lose no
 * registration, no answer and no event; readiness that arose during the upgrade is
 * reported after it; a disarmed oneshot stays disarmed; a binary that cannot start is
 * refused and the daemon carries on. Each test checks fds of this process and of the
 * daemon come back. */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "harness.h"

#define PATIENCE_MS 5000
#define QUIET_MS 200


static rd_client *open_client(void)
{
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, rdt_suite.sock), 0);
	return c;
}

static bool answer_has(rd_client *c, const char *req, const char *want)
{
	char *s = NULL;
	assert_int_equal(rd_control(c, req, &s), 0);
	bool ok = strstr(s, want) != NULL;
	if (!ok)
		print_message("answer: %s\n", s);
	free(s);
	return ok;
}

/* 20 clients x 50 registrations; every fd is made ready while the upgrade runs. After
 * it, each client has every token reported, its registrations answer, and the daemon
 * is the same process. */
static void test_upgrade_under_load(void **state)
{
	(void)state;
	enum { CLIENTS = 20, REGS = 50 };
	static rd_client *cl[CLIENTS];
	static int efd[CLIENTS][REGS];
	for (int c = 0; c < CLIENTS; c++) {
		cl[c] = open_client();
		struct rd_entry e[REGS];
		for (int i = 0; i < REGS; i++) {
			efd[c][i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			e[i] = (struct rd_entry){ .fd = efd[c][i], .token = (uint64_t)i,
						  .interest = RD_READABLE };
		}
		assert_int_equal(rd_add_batch(cl[c], e, REGS), REGS);
	}
	int before = rdt_count_fds(rdt_suite.pid);

	/* The writer makes everything ready while the upgrade is in progress. */
	pid_t writer = fork();
	assert_true(writer >= 0);
	if (writer == 0) {
		uint64_t one = 1;
		for (int c = 0; c < CLIENTS; c++)
			for (int i = 0; i < REGS; i++)
				if (write(efd[c][i], &one, sizeof(one)) != sizeof(one))
					_exit(1);
		_exit(0);
	}
	rd_client *ctl = open_client();
	char want[32];
	snprintf(want, sizeof(want), "\"pid\":%d", (int)rdt_suite.pid);
	assert_true(answer_has(ctl, "{\"command\":\"upgrade\"}", "\"upgraded\":true"));
	int ws;
	assert_int_equal(rdt_waitpid(writer, &ws, RDT_EXIT_MS), writer);
	assert_int_equal(WEXITSTATUS(ws), 0);
	assert_true(answer_has(ctl, "{\"command\":\"status\"}", want));
	assert_true(answer_has(ctl, "{\"command\":\"status\"}", "\"clients\":21,"));
	assert_true(answer_has(ctl, "{\"command\":\"status\"}", "\"registrations\":1000,"));

	for (int c = 0; c < CLIENTS; c++) {
		bool seen[REGS] = { false };
		int distinct = 0;
		struct rd_event ev[REGS];
		while (distinct < REGS) {
			int n = rd_wait(cl[c], ev, REGS, PATIENCE_MS);
			assert_true(n > 0);
			for (int i = 0; i < n; i++) {
				assert_true(ev[i].token < REGS);
				if (!seen[ev[i].token]) {
					seen[ev[i].token] = true;
					distinct++;
				}
			}
		}
		/* No disconnect: the same connection answers for its old registrations. */
		assert_int_equal(rd_delete(cl[c], 0), 0);
		assert_int_equal(rd_delete(cl[c], 0), -ENOENT);
	}
	/* Everything the old process held is held once by the new one: 999 registrations,
	 * 21 clients, and nothing else new (the state's memfd is closed). */
	assert_int_equal(rdt_count_fds(rdt_suite.pid), before + 1 /* ctl */ - CLIENTS /* deleted */);
	rd_close(ctl);
	for (int c = 0; c < CLIENTS; c++) {
		rd_close(cl[c]);
		for (int i = 0; i < REGS; i++)
			close(efd[c][i]);
	}
}

/* The "upgrades" member of a status answer. */
static json_int_t upgrades_in(const char *status)
{
	const char *p = strstr(status, "\"upgrades\":");
	assert_non_null(p);
	return (json_int_t)strtoll(p + 11, NULL, 10);
}

/* A oneshot registration delivered before the upgrade stays disarmed after it; one
 * still armed reports; queued readiness a client had not read yet arrives after. */
static void test_upgrade_keeps_modes_and_queue(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int p[2], q[2], r2[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(pipe2(q, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(pipe2(r2, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(c, q[0], 2, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(c, r2[0], 3, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(write(p[1], "a", 1), 1);
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 1); /* 1 is now disarmed */
	/* Ready before the upgrade, not read by the client until after it. */
	assert_int_equal(write(r2[1], "c", 1), 1);

	char *text = NULL;
	assert_int_equal(rd_control(c, "{\"command\":\"status\"}", &text), 0);
	json_int_t before = upgrades_in(text);
	free(text);
	kill(rdt_suite.pid, SIGUSR2);
	rd_client *ctl = open_client(); /* served by whichever process is up: no refusal */
	/* The upgrade happened: the new program counts it. */
	json_int_t after = before;
	for (int i = 0; i < PATIENCE_MS / 10 && after == before; i++) {
		assert_int_equal(rd_control(ctl, "{\"command\":\"status\"}", &text), 0);
		after = upgrades_in(text);
		free(text);
		if (after == before) {
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
	}
	assert_int_equal(after, before + 1);

	assert_int_equal(write(p[1], "a", 1), 1); /* disarmed: nothing */
	assert_int_equal(write(q[1], "b", 1), 1); /* armed: reported */
	bool got2 = false, got3 = false;
	for (int i = 0; i < 4 && !(got2 && got3); i++) {
		int n = rd_wait(c, &ev, 1, PATIENCE_MS);
		assert_int_equal(n, 1);
		assert_int_not_equal(ev.token, 1);
		got2 |= ev.token == 2;
		got3 |= ev.token == 3;
	}
	assert_true(got2 && got3);
	assert_int_equal(rd_wait(c, &ev, 1, QUIET_MS), 0);
	assert_int_equal(rd_rearm(c, 1), 0);
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 1);

	rd_close(ctl);
	rd_close(c);
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
	close(r2[0]);
	close(r2[1]);
}

/* Upgrading to another binary by path works; one that is not readyd is refused before
 * anything is handed over, and the daemon carries on. */
static void test_upgrade_binary_choice(void **state)
{
	(void)state;
	rd_client *c = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 9, RD_READABLE, 0), 0);

	assert_true(answer_has(c, "{\"command\":\"upgrade\",\"binary\":\"/bin/true\"}",
			       "did not answer as readyd does"));
	assert_true(answer_has(c, "{\"command\":\"upgrade\",\"binary\":\"/nonexistent/readyd\"}",
			       "No such file or directory"));
	assert_true(answer_has(c, "{\"command\":\"upgrade\",\"binary\":7}", "must be a path"));

	/* A copy of the daemon elsewhere: the new binary is that file. */
	char dir[] = "/tmp/readyd-up-XXXXXX", copy[64], cmd[256];
	assert_non_null(mkdtemp(dir));
	snprintf(copy, sizeof(copy), "%s/readyd-new", dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s",
		 getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd", copy);
	assert_int_equal(system(cmd), 0);
	char req[PATH_MAX + 64];
	snprintf(req, sizeof(req), "{\"command\":\"upgrade\",\"binary\":\"%s\"}", copy);
	assert_true(answer_has(c, req, "\"upgraded\":true"));
	char exe[128], link[128] = "";
	snprintf(exe, sizeof(exe), "/proc/%d/exe", (int)rdt_suite.pid);
	ssize_t l = readlink(exe, link, sizeof(link) - 1);
	assert_true(l > 0);
	link[l] = '\0';
	assert_string_equal(link, copy);

	/* The registration made before both attempts still works. */
	assert_int_equal(write(p[1], "x", 1), 1);
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 9);
	/* Back to the original binary, so the suite ends on it. */
	char orig[PATH_MAX];
	assert_non_null(realpath(getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd", orig));
	snprintf(req, sizeof(req), "{\"command\":\"upgrade\",\"binary\":\"%s\"}", orig);
	assert_true(answer_has(c, req, "\"upgraded\":true"));
	unlink(copy);
	rmdir(dir);
	rd_close(c);
	close(p[0]);
	close(p[1]);
}

/* readyctl upgrade and readyctl reload go through the control plane, and say what
 * happened in their exit status. */
static void test_readyctl_upgrade_and_reload(void **state)
{
	(void)state;
	const char *ctl = getenv("READYCTL_BIN") ? getenv("READYCTL_BIN") : "build/bin/readyctl";
	char cmd[512], line[256] = "";
	rd_client *c = open_client();
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 4, RD_READABLE, 0), 0);

	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s upgrade", ctl, rdt_suite.sock);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	assert_int_equal(pclose(f), 0);
	char want[64];
	snprintf(want, sizeof(want), "pid %d", (int)rdt_suite.pid);
	assert_non_null(strstr(line, want));

	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s upgrade --binary /bin/true 2>/dev/null",
		 ctl, rdt_suite.sock);
	int st = system(cmd);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	snprintf(cmd, sizeof(cmd), "timeout 30 %s --socket %s reload >/dev/null", ctl, rdt_suite.sock);
	assert_int_equal(system(cmd), 0);

	/* The client was there all along. */
	assert_int_equal(write(p[1], "x", 1), 1);
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 4);
	rd_close(c);
	close(p[0]);
	close(p[1]);
}

/* A stop and an upgrade read in the same turn of the loop: the stop wins. The daemon is
 * stopped (SIGSTOP) while SIGTERM and an upgrade request both arrive, then resumed: it
 * must refuse the upgrade and exit 0, not execute a new program that knows nothing of
 * the stop. */
static void test_stop_wins_over_upgrade(void **state)
{
	(void)state;
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, NULL), 0);
	int s = rdt_connect(d.sock);
	assert_true(s >= 0);
	assert_int_equal(rdt_hello(s), 0);
	static const char req[] = "{\"command\":\"upgrade\"}";
	uint8_t msg[128];
	size_t len = rdp_encode_json(msg, sizeof(msg), RDP_MSG_CONTROL, 9, req, sizeof(req) - 1);
	assert_true(len > 0);
	assert_int_equal(kill(d.pid, SIGSTOP), 0);
	assert_int_equal(kill(d.pid, SIGTERM), 0);
	assert_int_equal(rdt_send(s, msg, len, NULL, 0), 0);
	assert_int_equal(kill(d.pid, SIGCONT), 0);
	int st = 0;
	if (rdt_waitpid(d.pid, &st, 10000) != d.pid) /* kills it when it does not stop */
		fail_msg("the daemon went on after SIGTERM (the upgrade ran)");
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	d.pid = 0;
	close(s);
	(void)rdt_daemon_stop(&d); /* the socket file and directory; the daemon is gone */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_upgrade_under_load, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_keeps_modes_and_queue, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_binary_choice, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_readyctl_upgrade_and_reload, rdt_test_setup, rdt_test_teardown),
		cmocka_unit_test_setup_teardown(test_stop_wins_over_upgrade, rdt_test_setup, rdt_test_teardown),
	};
	return cmocka_run_group_tests_name("upgrade", tests, rdt_suite_setup, rdt_suite_teardown);
}
