/* Integration-test harness: a real readyd on a temporary socket, raw protocol helpers,
 * and the fd/RSS accounting every test is wrapped in. */
#ifndef READYD_TESTS_HARNESS_H
#define READYD_TESTS_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <sys/types.h>

struct rdt_daemon {
	pid_t pid;
	char dir[64];
	char sock[108];
	char config[128];
};

/* Start build/bin/readyd (or $READYD_BIN) on a fresh socket in a temporary directory;
 * config_json, when not NULL, is written to a file and passed with --config. Waits (a
 * bounded number of tries) until the socket accepts. Returns 0 or -errno. */
int rdt_daemon_start(struct rdt_daemon *d, const char *config_json);
/* SIGTERM, wait, remove the directory. Returns the daemon's exit status (or -1). */
int rdt_daemon_stop(struct rdt_daemon *d);
/* waitpid(pid, st, 0) bounded by timeout_ms: past it, pid is killed with SIGKILL and
 * reaped, and the call returns -ETIMEDOUT (so that an assertion on the pid fails rather
 * than the suite hanging). */
pid_t rdt_waitpid(pid_t pid, int *st, int timeout_ms);
/* How long a test waits for a process it asked to exit. */
#define RDT_EXIT_MS 30000

#include "fdcheck.h"
/* The fds an idle daemon holds: everything but sockets, plus its listener. */
int rdt_idle_fds(pid_t pid);
/* Wait until pid has 'want' fds, polling a bounded number of times; returns the last
 * count seen. The daemon handles disconnects asynchronously, so tests wait for the
 * count instead of reading it once. */
int rdt_wait_fds(pid_t pid, int want);
/* Resident set of a process in KiB (VmRSS). */
long rdt_rss_kib(pid_t pid);

/* Raw protocol access for hostile tests. */
int rdt_connect(const char *sock);                /* SEQPACKET connect, -errno */
int rdt_hello(int fd);                            /* HELLO + WELCOME, 0 or -errno */
/* Receive one message (up to cap bytes) waiting up to timeout_ms. Returns its length, 0 at
 * end of stream, -ETIMEDOUT, or -errno. */
int rdt_recv(int fd, void *buf, size_t cap, int timeout_ms);
/* Send raw bytes with optional fds. 0 or -errno. */
int rdt_send(int fd, const void *buf, size_t len, const int *fds, size_t nfds);
/* Wait for an ERROR message and return its reason, or a negative errno when none came.
 * Then expect end of stream. */
int rdt_expect_error(int fd);

/* Per-test fd accounting: record the test process's and the daemon's fd counts before a
 * test, and assert both came back after it. */
struct rdt_fds {
	int self;
	int daemon;
};
void rdt_fds_snapshot(struct rdt_fds *s, pid_t daemon);
void rdt_fds_assert_back(const struct rdt_fds *s, pid_t daemon);

/* One daemon per test program, fds checked around every test: the fixture most suites
 * share. rdt_suite_setup/teardown go to cmocka_run_group_tests, rdt_test_setup/teardown
 * to each test. */
extern struct rdt_daemon rdt_suite;
int rdt_suite_setup(void **state);
int rdt_suite_teardown(void **state);
int rdt_test_setup(void **state);
int rdt_test_teardown(void **state);

#endif
