/* Hostile clients, part two: well-formed requests with hostile fds (epoll instances and an
 * epoll cycle, the client's own connection, a socket with fds in flight, one open file
 * twice, an fd that is always ready, O_NONBLOCK flipped under the daemon), a SIGSTOPped
 * client, a client touching another's tokens, a connection handed to another process,
 * and configs that do not parse, at start and on SIGHUP. Each test checks that only the
 * offender is affected, that the daemon's fd count and RSS come back, and that a
 * bystander connected before the hostile action is still served (an event for its pipe,
 * and replies). Malformed frames and limits are tests/test_hostile.c's. */
#include "bystander.h"
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "../proto/rdp_io.h"

/* A bound on every wait for the daemon; never a timing assertion. */
#define WAIT_MS 5000
/* What the daemon's resident set may keep after a test: allocator slack, not a leak. */
#define RSS_SLACK_KIB 512
/* How long a test leaves the daemon alone to see that nothing more comes. */
#define IDLE_WINDOW_MS 1000

static struct rdt_daemon g_daemon; /* one daemon for the whole suite */

static void nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ---- the bystander (bystander.c): a well-behaved client that must not notice the offender */







/* ---- fixtures */

struct fixture {
	bool done;                  /* the test body ran to its end */
	struct rdt_fds fds;
	long rss_kib;               /* the suite daemon's, before the test */
	struct bystander by;        /* on the suite daemon */
	struct rdt_daemon extra;    /* a test's own daemon; pid 0 when none */
	struct bystander by_extra;  /* on the extra daemon */
	pid_t child;                /* a test's child process, killed if left; 0 when none */
};

/* Wait until a freshly started daemon holds its idle fds, and return how many: one HELLO
 * round trip first makes sure its loop runs. */
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
	signal(SIGPIPE, SIG_IGN);
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
	fx->rss_kib = rdt_rss_kib(g_daemon.pid);
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
	long rss0 = fx->rss_kib;
	bool done = fx->done;

	/* Left over only when a test failed half way. */
	if (fx->child > 0) {
		kill(fx->child, SIGKILL);
		(void)rdt_waitpid(fx->child, NULL, RDT_EXIT_MS);
	}
	bystander_close(&fx->by_extra);
	if (fx->extra.pid > 0)
		(void)rdt_daemon_stop(&fx->extra);
	int held = rdt_count_fds(g_daemon.pid);
	bool by_open = fx->by.c != NULL;
	bystander_close(&fx->by);
	free(fx);
	*state = NULL;
	/* A test that failed half way left its own fds open; its failure is reported
	 * already, so the accounting is only checked after a test that completed. */
	if (done) {
		rdt_fds_assert_back(&fds, g_daemon.pid);
		long rss = rdt_rss_kib(g_daemon.pid);
		if (rss < 0 || rss - rss0 > RSS_SLACK_KIB)
			fail_msg("daemon RSS %ld KiB before the test, %ld KiB after (slack %d KiB)",
				 rss0, rss, RSS_SLACK_KIB);
	} else if (by_open)
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

/* ---- helpers */

/* Wait (bounded) for an event for 'token' on c; returns its readiness. Events for other
 * tokens are allowed (spurious readiness is part of the contract), and may come by the
 * hundred before it (a connection registered with itself). */
static uint32_t wait_token(rd_client *c, uint64_t token)
{
	struct rd_event ev[64];

	for (int tries = 0; tries < 4096; tries++) {
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

/* Wait (bounded) until every token in want[0..n) has had an event on c. */
static void wait_tokens(rd_client *c, const uint64_t *want, size_t n)
{
	struct rd_event ev[64];
	bool seen[16] = { false };
	size_t left = n;

	assert_true(n <= 16);
	for (int tries = 0; tries < 4096 && left > 0; tries++) {
		int r = rd_wait(c, ev, 64, WAIT_MS);
		if (r <= 0)
			fail_msg("%zu of %zu tokens never reported within %d ms (rd_wait %d)", left, n,
				 WAIT_MS, r);
		for (int i = 0; i < r; i++)
			for (size_t k = 0; k < n; k++)
				if (ev[i].token == want[k] && !seen[k]) {
					seen[k] = true;
					left--;
				}
	}
	if (left > 0)
		fail_msg("events came, but %zu of %zu tokens never reported", left, n);
}

/* Wait (bounded) until each token in want[0..n) has an event on c newer than the tick
 * recorded for it in tick[token] (tokens below 8), and record the new ticks: a record of
 * an earlier readiness does not count. */
static void wait_newer(rd_client *c, uint32_t *tick, const uint64_t *want, size_t n)
{
	struct rd_event ev[64];
	bool seen[8] = { false };
	size_t left = n;

	for (int tries = 0; tries < 4096 && left > 0; tries++) {
		int r = rd_wait(c, ev, 64, WAIT_MS);
		if (r <= 0)
			fail_msg("%zu of %zu tokens had no new event within %d ms (rd_wait %d)", left,
				 n, WAIT_MS, r);
		for (int i = 0; i < r; i++) {
			assert_true(ev[i].token < 8);
			for (size_t k = 0; k < n; k++) {
				if (ev[i].token != want[k] || ev[i].tick <= tick[want[k]])
					continue;
				tick[want[k]] = ev[i].tick;
				if (!seen[k]) {
					seen[k] = true;
					left--;
				}
			}
		}
	}
	if (left > 0)
		fail_msg("events came, but %zu of %zu tokens had none newer", left, n);
}

static void drain(int fd)
{
	char buf[4096];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

/* The last copy of the other end of a socketpair is gone: 'fd' sees the hang-up. */
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

/* A control-plane request; the answer parsed. */
static json_t *control(rd_client *c, const char *req)
{
	char *text = NULL;
	assert_int_equal(rd_control(c, req, &text), 0);
	json_t *j = json_loads(text, 0, NULL);
	if (!j)
		fail_msg("control answer is not JSON: %s", text);
	free(text);
	return j;
}

static json_int_t json_int_of(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v))
		fail_msg("no integer \"%s\" in the control answer", key);
	return json_integer_value(v);
}

/* The "clients" entry of the asking connection itself ("self": true), a new reference. */
static json_t *client_self(rd_client *c)
{
	json_t *j = control(c, "{\"command\":\"clients\"}");
	json_t *arr = json_object_get(j, "clients"), *x, *found = NULL;
	size_t i;
	assert_true(json_is_array(arr));
	json_array_foreach(arr, i, x) if (json_is_true(json_object_get(x, "self"))) found = x;
	if (!found)
		fail_msg("the clients list has no entry with \"self\": true");
	json_incref(found);
	json_decref(j);
	return found;
}

/* The "clients" entry with pid 'pid' that c may see, or NULL. A new reference. */
static json_t *client_by_pid(rd_client *c, pid_t pid)
{
	json_t *j = control(c, "{\"command\":\"clients\"}");
	json_t *arr = json_object_get(j, "clients"), *x, *found = NULL;
	size_t i;
	json_array_foreach(arr, i, x) if (json_int_of(x, "pid") == pid) found = x;
	if (found)
		json_incref(found);
	json_decref(j);
	return found;
}

static int epoll_watch(int ep, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* The number under which 'pid' holds its epoll instance (the daemon has one), or -1. */
static int epoll_fd_of(pid_t pid)
{
	char path[64], link[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	assert_non_null(dir);
	int found = -1;
	struct dirent *e;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		char fp[400];
		snprintf(fp, sizeof(fp), "%s/%s", path, e->d_name);
		ssize_t l = readlink(fp, link, sizeof(link) - 1);
		if (l < 0)
			continue;
		link[l] = '\0';
		if (strcmp(link, "anon_inode:[eventpoll]") == 0)
			found = atoi(e->d_name);
	}
	closedir(dir);
	return found;
}

/* ---- epoll instances */

/* An epoll instance is a pollable file: registering one is allowed, and it reports when
 * something it watches is ready. Nesting is the kernel's business: epoll allows
 * EP_MAX_NESTS (4) levels of epoll below an epoll, so a chain whose outermost instance
 * already has 4 levels below it cannot go into the daemon's epoll, and that entry alone
 * gets ELOOP (epoll_ctl's errno). A real cycle needs the daemon's own epoll fd, which only
 * a process that may ptrace the daemon can take (pidfd_getfd); with it, the daemon's own
 * instance gets EINVAL (an epoll cannot watch itself) and one that watches it ELOOP. */
static void test_epoll_fd_and_cycle(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int q[2], n[5];
	char buf[16];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 1), base + 1);
	assert_int_equal(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);

	/* One level: allowed, reports, shown as an epoll. */
	int ep = epoll_create1(EPOLL_CLOEXEC);
	assert_true(ep >= 0);
	assert_int_equal(epoll_watch(ep, q[0]), 0);
	assert_int_equal(rd_add(c, ep, 1, RD_READABLE, RD_EDGE), 0);
	json_t *j = control(c, "{\"command\":\"registrations\"}");
	json_t *regs = json_object_get(j, "registrations");
	assert_int_equal(json_array_size(regs), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(regs, 0), "fd_type")),
			    "epoll");
	json_decref(j);
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(c, 1) & RD_READABLE);
	assert_int_equal(rd_delete(c, 1), 0);
	drain(q[0]);

	/* A chain n[4] > n[3] > n[2] > n[1] > n[0] > pipe: n[4] has four epoll levels below
	 * it, n[3] three. */
	for (int i = 0; i < 5; i++) {
		n[i] = epoll_create1(EPOLL_CLOEXEC);
		assert_true(n[i] >= 0);
		assert_int_equal(epoll_watch(n[i], i == 0 ? q[0] : n[i - 1]), 0);
	}
	assert_int_equal(rd_add(c, n[4], 2, RD_READABLE, RD_EDGE), -ELOOP);
	assert_int_equal(rd_add(c, n[4], 2, RD_READABLE, RD_ONESHOT), -ELOOP);
	/* Four levels below the daemon's epoll is the most there may be: allowed, and the
	 * readiness of the pipe comes up through all of them. */
	assert_int_equal(rd_add(c, n[3], 3, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(c, 3) & RD_READABLE);
	/* The refused entries were closed by the daemon, the accepted one is held. */
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 2), base + 2);
	bystander_check(&fx->by);

	/* With n[3] in the daemon's epoll, one more level under it would be five below the
	 * daemon's. Kernels that count depth upwards too refuse the client's own epoll_ctl
	 * (ELOOP); older ones allow it. Either way the daemon is not harmed. */
	int m = epoll_create1(EPOLL_CLOEXEC);
	assert_true(m >= 0);
	int r = epoll_watch(n[0], m);
	print_message("a fifth level added under a registered chain: %s\n",
		      r == 0 ? "allowed by this kernel" : strerror(-r));
	assert_true(r == 0 || r == -ELOOP);
	drain(q[0]);
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(c, 3) & RD_READABLE);
	assert_int_equal(rd_delete(c, 3), 0);
	close(m);

	/* A cycle through the daemon's own epoll instance. */
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
	int pidfd = (int)syscall(SYS_pidfd_open, g_daemon.pid, 0);
	int dnum = epoll_fd_of(g_daemon.pid);
	int dep = pidfd >= 0 && dnum >= 0 ? (int)syscall(SYS_pidfd_getfd, pidfd, dnum, 0) : -1;
#else
	int pidfd = -1, dep = -1;
	errno = ENOSYS;
#endif
	if (dep < 0) {
		/* Shown as skipped, not passed: the cycle checks below did not run. */
		print_message("not allowed to take the daemon's epoll fd (%s): no cycle tried\n",
			      strerror(errno));
		rd_close(c);
		skip();
	} else {
		fcntl(dep, F_SETFD, FD_CLOEXEC);
		/* The daemon's epoll itself: epoll_ctl refuses an instance watching itself. */
		assert_int_equal(rd_add(c, dep, 4, RD_READABLE, RD_EDGE), -EINVAL);
		/* An instance that watches the daemon's: adding it would close a loop. */
		int y = epoll_create1(EPOLL_CLOEXEC);
		assert_true(y >= 0);
		assert_int_equal(epoll_watch(y, dep), 0);
		assert_int_equal(rd_add(c, y, 5, RD_READABLE, RD_EDGE), -ELOOP);
		close(y);
		/* The other way round: a registered instance cannot be made to watch the
		 * daemon's (the client's own epoll_ctl fails). */
		assert_int_equal(rd_add(c, ep, 6, RD_READABLE, RD_EDGE), 0);
		assert_int_equal(epoll_watch(ep, dep), -ELOOP);
		assert_int_equal(write(q[1], "x", 1), 1);
		assert_true(wait_token(c, 6) & RD_READABLE);
		assert_int_equal(rd_delete(c, 6), 0);
		close(dep);
	}
	if (pidfd >= 0)
		close(pidfd);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 1), base + 1);

	rd_close(c);
	while (read(q[0], buf, sizeof(buf)) > 0)
		;
	for (int i = 0; i < 5; i++)
		close(n[i]);
	close(ep);
	close(q[0]);
	close(q[1]);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	finish(fx);
}

/* ---- the client's own connection */

/* The daemon must not end up holding a client's connection open itself. Registering the
 * client's own end (or another client's) gives the daemon a copy of it, so when the
 * client closes its connection the daemon never sees the hang-up: the connection and
 * its registrations would stay for the daemon's life, counted against the uid's
 * connections. Either the daemon refuses such an entry (with an errno), or it lets the
 * connection go when the client closes it. In between, the client keeps working, and
 * the daemon does not spin on the events it sends making the connection readable. Its
 * own daemon, so a leak does not outlive this test. */
static void test_own_connection_registered(void **state)
{
	struct fixture *fx = *state;
	rd_client *c, *a, *b;
	int p[2];

	int idle = extra_start(fx, NULL);
	pid_t dpid = fx->extra.pid;
	int base = rdt_count_fds(dpid);
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);

	assert_int_equal(rd_open(&c, fx->extra.sock), 0);
	assert_int_equal(rdt_wait_fds(dpid, base + 1), base + 1);
	int r = rd_add(c, rd_fd(c), 1, RD_READABLE, RD_EDGE);
	print_message("own connection registered: %s\n", r == 0 ? "allowed" : strerror(-r));
	assert_true(r <= 0 && r > -4096);
	/* The client still works: a pipe reports, and the control plane answers. */
	assert_int_equal(rd_add(c, p[0], 2, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_true(wait_token(c, 2) & RD_READABLE);
	json_t *self = client_self(c);
	assert_int_equal(json_int_of(self, "registrations"), r == 0 ? 2 : 1);
	json_decref(self);
	bystander_check(&fx->by_extra);
	if (r == 0) {
		/* Deleting it undoes it. */
		assert_int_equal(rd_delete(c, 1), 0);
		assert_int_equal(rdt_wait_fds(dpid, base + 2), base + 2);
		assert_int_equal(rd_add(c, rd_fd(c), 1, RD_READABLE, RD_ONESHOT), 0);
	}
	/* The client closes its connection with the registration in place. */
	rd_close(c);
	int self_left = rdt_wait_fds(dpid, base) - base;

	/* Two clients, each registering the other's connection, then both closing. */
	int base2 = rdt_count_fds(dpid);
	assert_int_equal(rd_open(&a, fx->extra.sock), 0);
	assert_int_equal(rd_open(&b, fx->extra.sock), 0);
	int ra = rd_add(a, rd_fd(b), 1, RD_READABLE, RD_EDGE);
	int rb = rd_add(b, rd_fd(a), 1, RD_READABLE, RD_EDGE);
	assert_true(ra <= 0 && ra > -4096 && rb <= 0 && rb > -4096);
	assert_int_equal(rd_add(a, p[0], 2, RD_READABLE, RD_EDGE), 0);
	drain(p[0]);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_true(wait_token(a, 2) & RD_READABLE);
	rd_close(a);
	rd_close(b);
	int mutual_left = rdt_wait_fds(dpid, base2) - base2;
	bystander_check(&fx->by_extra);

	if (self_left != 0 || mutual_left != 0)
		fail_msg("connections registered with the daemon outlive their clients: a client "
			 "that registered its own connection and closed it left %d fds in the "
			 "daemon; two that registered each other's and closed left %d. The "
			 "daemon holds the clients' ends, so it never sees the hang-up, and the "
			 "connections stay for its life",
			 self_left, mutual_left);

	close(p[0]);
	close(p[1]);
	bystander_check(&fx->by_extra);
	extra_stop(fx, idle);
	finish(fx);
}

/* ---- a socket with fds in flight */

/* Send one byte with 'fds' attached over 'sock'; they stay in flight, unread. */
static void send_fds(int sock, const int *fds, size_t nfds)
{
	assert_int_equal(rdt_send(sock, "m", 1, fds, nfds), 0);
}

/* A socket whose receive queue holds an SCM_RIGHTS message nobody reads is a socket like
 * any other: it registers, reports readable, and deleting it or disconnecting closes the
 * daemon's copy; once the client closes its copies, the fds in flight are released (the
 * daemon neither received nor kept them). When what is in flight is the client's own
 * readyd connection, the daemon's registration holds that connection open through the
 * queue: a delete undoes it. After the client closes its connection with the
 * registration in place, the kernel keeps the connection alive (its last reference is in
 * a queue only the daemon's copy can reach, and unix garbage collection spares sockets a
 * process holds), and the daemon cannot tell: the fds are the offender's, counted against
 * its uid's connections and registrations, shown by the control plane, and released by
 * an administrator's disconnect, which this checks. */
static void test_socket_with_fds_in_flight(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int sp[2], q[2], r2[2];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, r2), 0);
	/* In flight to sp[0]: a pipe's read end and a socket, twice each. */
	int inflight[4] = { q[0], r2[0], q[0], r2[0] };
	send_fds(sp[1], inflight, 4);
	close(q[0]);
	close(r2[0]);

	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	assert_int_equal(rd_add(c, sp[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(c, sp[0], 2, RD_READABLE | RD_WRITABLE, RD_ONESHOT), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 3), base + 3);
	const uint64_t both[2] = { 1, 2 };
	wait_tokens(c, both, 2);
	/* More in flight after it is registered: a new edge. */
	int more = q[1];
	send_fds(sp[1], &more, 1);
	assert_true(wait_token(c, 1) & RD_READABLE);
	bystander_check(&fx->by);

	/* Delete one, disconnect with the other: the daemon's copies go. */
	assert_int_equal(rd_delete(c, 1), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 2), base + 2);
	rd_close(c);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	/* Our copies closed too, the queue goes with the socket, and so do the fds in
	 * it: nobody holds the pipe's read end or r2[0] any more. */
	close(sp[0]);
	close(sp[1]);
	assert_hup(r2[1]);
	close(r2[1]);
	assert_no_readers(q[1]);
	close(q[1]);

	/* The client's own connection in flight in a registered socket. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	int own = rd_fd(c);
	send_fds(sp[1], &own, 1);
	assert_int_equal(rd_add(c, sp[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_true(wait_token(c, 1) & RD_READABLE);
	/* Deleted: nothing of it stays. */
	assert_int_equal(rd_delete(c, 1), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 1), base + 1);
	close(sp[0]);
	close(sp[1]);
	rd_close(c);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);

	/* Disconnected with it registered: the kernel keeps the connection, the queue that
	 * holds it is the daemon's. It is the offender's, visible in the control plane,
	 * and an administrator's disconnect releases all of it. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	json_t *self = client_self(c);
	json_int_t id = json_int_of(self, "id");
	json_decref(self);
	own = rd_fd(c);
	send_fds(sp[1], &own, 1);
	assert_int_equal(rd_add(c, sp[0], 1, RD_READABLE, RD_EDGE), 0);
	close(sp[0]);
	close(sp[1]);
	rd_close(c);
	bystander_check(&fx->by);
	char req[128];
	snprintf(req, sizeof(req), "{\"command\":\"disconnect\",\"client\":%lld}", (long long)id);
	json_t *j = control(fx->by.c, req);
	print_message("client disconnected with its own connection in flight in its registered "
		      "socket: %s\n",
		      json_is_true(json_object_get(j, "ok")) ? "kept, until an admin's disconnect"
							    : "released by the daemon");
	json_decref(j);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);

	finish(fx);
}

/* ---- one open file, registered twice */

/* Each ADD entry is its own registration with its own daemon copy, so one open file
 * registered under two tokens reports under both, and registered by two clients reports
 * to each; deleting one registration leaves the others. */
static void test_same_file_twice(void **state)
{
	struct fixture *fx = *state;
	rd_client *a, *b;
	int p[2];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	int dup_fd = fcntl(p[0], F_DUPFD_CLOEXEC, 0);
	assert_true(dup_fd >= 0);

	/* One client: the same fd under tokens 1 and 2, a dup of it under 3, one edge and
	 * one oneshot. */
	uint32_t ta[8] = { 0 }, tb[8] = { 0 };
	assert_int_equal(rd_open(&a, g_daemon.sock), 0);
	assert_int_equal(rd_add(a, p[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(a, p[0], 2, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(a, dup_fd, 3, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 4), base + 4);
	assert_int_equal(write(p[1], "x", 1), 1);
	const uint64_t t123[3] = { 1, 2, 3 }, t12[2] = { 1, 2 }, t1[1] = { 1 }, t2[1] = { 2 };
	wait_newer(a, ta, t123, 3);

	/* Two clients: the same fd under the same token number, each its own. b's is
	 * added while the pipe is readable: that first report is not counted. */
	assert_int_equal(rd_open(&b, g_daemon.sock), 0);
	assert_int_equal(rd_add(b, p[0], 1, RD_READABLE, RD_EDGE), 0);
	wait_newer(b, tb, t1, 1);
	drain(p[0]);
	assert_int_equal(write(p[1], "x", 1), 1);
	wait_newer(a, ta, t12, 2);
	wait_newer(b, tb, t1, 1);

	/* Deleting a's token 1 leaves a's token 2 and b's token 1. */
	assert_int_equal(rd_delete(a, 1), 0);
	drain(p[0]);
	assert_int_equal(write(p[1], "x", 1), 1);
	wait_newer(a, ta, t2, 1);
	wait_newer(b, tb, t1, 1);
	/* And a leaving leaves b's. */
	rd_close(a);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base + 2), base + 2);
	drain(p[0]);
	assert_int_equal(write(p[1], "x", 1), 1);
	wait_newer(b, tb, t1, 1);
	bystander_check(&fx->by);

	rd_close(b);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(dup_fd);
	close(p[0]);
	close(p[1]);
	finish(fx);
}

/* ---- an fd that is always ready */

/* An eventfd whose count is never read and a socket with unread data are always ready.
 * In edge mode they report once; in oneshot mode each re-arm reports once more, however
 * fast the offender re-arms. Either way the daemon does not spin: once the offender stops,
 * the daemon's CPU use stays under the bound and no event is delivered. */
static void test_always_ready_no_busy_loop(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int sp[2];
	struct rd_event ev[64];

	int base = rdt_count_fds(g_daemon.pid);
	int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(efd >= 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
	assert_int_equal(write(sp[1], "unread", 6), 6);

	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	struct rd_entry e[4] = {
		{ .fd = efd, .token = 1, .interest = RD_READABLE, .flags = RD_EDGE },
		{ .fd = sp[0], .token = 2, .interest = RD_READABLE | RD_WRITABLE, .flags = RD_EDGE },
		{ .fd = efd, .token = 3, .interest = RD_READABLE, .flags = RD_ONESHOT },
		{ .fd = sp[0], .token = 4, .interest = RD_READABLE | RD_WRITABLE, .flags = RD_ONESHOT },
	};
	assert_int_equal(rd_add_batch(c, e, 4), 4);
	const uint64_t all[4] = { 1, 2, 3, 4 };
	wait_tokens(c, all, 4);

	/* The offender re-arms its oneshot registrations in a tight loop. */
	struct rd_entry rearm[2] = { { .token = 3 }, { .token = 4 } };
	long got = 0;
	for (int i = 0; i < 2000; i++) {
		assert_int_equal(rd_rearm_batch(c, rearm, 2), 2);
		int n = rd_wait(c, ev, 64, 0);
		assert_true(n >= 0);
		got += n;
		if (i == 1000)
			bystander_check(&fx->by);
	}
	print_message("2000 re-arms of always-ready fds: %ld events while re-arming\n", got);
	assert_true(got > 0);
	/* Which re-arm an event answers is not known, so the oneshots start again: after
	 * the DEL replies nothing of the old ones comes, and the new ones report once each
	 * and are then disarmed. */
	assert_int_equal(rd_delete_batch(c, rearm, 2), 2);
	assert_int_equal(rd_add_batch(c, &e[2], 2), 2);
	const uint64_t oneshots[2] = { 3, 4 };
	wait_tokens(c, oneshots, 2);

	json_t *self = client_self(c);
	json_int_t delivered = json_int_of(self, "events_delivered");
	json_decref(self);
	nap_ms(IDLE_WINDOW_MS); /* left alone: no event may come of them */
	self = client_self(c);
	assert_int_equal(json_int_of(self, "events_delivered"), delivered);
	assert_int_equal(json_int_of(self, "queued_events"), 0);
	json_decref(self);
	assert_int_equal(rd_wait(c, ev, 64, 0), 0);
	bystander_check(&fx->by);

	rd_close(c);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(efd);
	close(sp[0]);
	close(sp[1]);
	finish(fx);
}

/* ---- O_NONBLOCK flipped on a registered fd */

/* The daemon's copy shares the open file description, so a client's fcntl(F_SETFL)
 * changes it under the daemon. The daemon never reads or writes a registered fd and does
 * not touch its flags: the client's flags stay as it set them, and events keep flowing
 * whichever way O_NONBLOCK is. */
static void test_nonblock_flipped(void **state)
{
	struct fixture *fx = *state;
	rd_client *c;
	int p[2], sp[2];
	char buf[16];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0); /* blocking */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
	int pfl = fcntl(p[0], F_GETFL), sfl = fcntl(sp[0], F_GETFL);
	assert_false(pfl & O_NONBLOCK);
	assert_true(sfl & O_NONBLOCK);

	assert_int_equal(rd_open(&c, g_daemon.sock), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(c, sp[0], 2, RD_READABLE, RD_ONESHOT), 0);
	/* Registering did not change them. */
	assert_int_equal(fcntl(p[0], F_GETFL), pfl);
	assert_int_equal(fcntl(sp[0], F_GETFL), sfl);

	for (int round = 0; round < 4; round++) {
		bool nb = round % 2 == 0;
		/* Flip: the pipe to non-blocking and back, the socket the other way. */
		assert_int_equal(fcntl(p[0], F_SETFL, nb ? pfl | O_NONBLOCK : pfl), 0);
		assert_int_equal(fcntl(sp[0], F_SETFL, nb ? sfl & ~O_NONBLOCK : sfl), 0);
		assert_int_equal(write(p[1], "x", 1), 1);
		assert_true(wait_token(c, 1) & RD_READABLE);
		assert_int_equal(write(sp[1], "y", 1), 1);
		assert_true(wait_token(c, 2) & RD_READABLE);
		/* One byte waits in each: a blocking read does not block. */
		assert_int_equal(read(p[0], buf, sizeof(buf)), 1);
		assert_int_equal(read(sp[0], buf, sizeof(buf)), 1);
		if (nb) {
			assert_int_equal(read(p[0], buf, sizeof(buf)), -1);
			assert_int_equal(errno, EAGAIN);
		}
		assert_int_equal(rd_rearm(c, 2), 0);
		/* The flags are the client's, as it set them: the daemon did not reset them. */
		assert_int_equal(fcntl(p[0], F_GETFL), nb ? pfl | O_NONBLOCK : pfl);
		assert_int_equal(fcntl(sp[0], F_GETFL), nb ? sfl & ~O_NONBLOCK : sfl);
	}
	bystander_check(&fx->by);

	rd_close(c);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(p[0]);
	close(p[1]);
	close(sp[0]);
	close(sp[1]);
	finish(fx);
}

/* ---- a SIGSTOPped client */

enum { STOP_FDS = 64, STOP_MARK = 1000 };

/* The child: register the eventfds (tokens 1..) and the marker, say 'R', then take events
 * forever, answering 'M' for every marker event. Exit codes say what failed. */
static void stopped_child(const char *sock, const int *efd, int marker, int out)
{
	struct rd_entry e[STOP_FDS + 1];
	struct rd_event ev[256];
	rd_client *c;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (rd_open(&c, sock) < 0)
		_exit(10);
	for (int i = 0; i < STOP_FDS; i++)
		e[i] = (struct rd_entry){ .fd = efd[i], .token = (uint64_t)i + 1,
					  .interest = RD_READABLE };
	e[STOP_FDS] = (struct rd_entry){ .fd = marker, .token = STOP_MARK, .interest = RD_READABLE };
	if (rd_add_batch(c, e, STOP_FDS + 1) != STOP_FDS + 1)
		_exit(11);
	if (write(out, "R", 1) != 1)
		_exit(12);
	for (;;) {
		int n = rd_wait(c, ev, 256, -1);
		if (n < 0)
			_exit(13);
		for (int i = 0; i < n; i++) {
			if (ev[i].token != STOP_MARK)
				continue;
			uint64_t v;
			(void)!read(marker, &v, sizeof(v));
			if (write(out, "M", 1) != 1)
				_exit(14);
		}
	}
}

/* One byte from fd, waiting at most WAIT_MS. */
static char read_byte(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char ch = 0;
	if (poll(&p, 1, WAIT_MS) != 1 || read(fd, &ch, 1) != 1)
		fail_msg("the child said nothing within %d ms", WAIT_MS);
	return ch;
}

static void bump_all(const int *efd, int n)
{
	uint64_t one = 1;
	for (int i = 0; i < n; i++)
		assert_int_equal(write(efd[i], &one, sizeof(one)), sizeof(one));
}

/* A client that is stopped stops reading: its events wait in the daemon's ready queue,
 * one record per registration however many times its fds become ready, so the daemon's
 * memory stays flat, and nobody else waits for it. Continued, it gets its events again;
 * killed, its fds come back. */
static void test_sigstopped_client(void **state)
{
	struct fixture *fx = *state;
	int efd[STOP_FDS], sync[2];

	int base = rdt_count_fds(g_daemon.pid);
	for (int i = 0; i < STOP_FDS; i++) {
		efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		assert_true(efd[i] >= 0);
	}
	int marker = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(marker >= 0);
	assert_int_equal(pipe2(sync, O_CLOEXEC), 0);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		stopped_child(g_daemon.sock, efd, marker, sync[1]);
	fx->child = pid;
	assert_int_equal(read_byte(sync[0]), 'R');
	int held = base + 1 + STOP_FDS + 1;
	assert_int_equal(rdt_wait_fds(g_daemon.pid, held), held);

	/* Running: many events, and the marker's answer shows they are being taken. */
	uint64_t one = 1;
	for (int round = 0; round < 50; round++)
		bump_all(efd, STOP_FDS);
	assert_int_equal(write(marker, &one, sizeof(one)), sizeof(one));
	assert_int_equal(read_byte(sync[0]), 'M');

	/* Stopped: many more readiness changes than it could ever queue. */
	int st;
	assert_int_equal(kill(pid, SIGSTOP), 0);
	assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
	assert_true(WIFSTOPPED(st));
	long rss0 = rdt_rss_kib(g_daemon.pid), rss_max = rss0;
	assert_true(rss0 > 0);
	for (int round = 0; round < 500; round++) {
		bump_all(efd, STOP_FDS);
		if (round % 50 == 0) {
			long rss = rdt_rss_kib(g_daemon.pid);
			rss_max = rss > rss_max ? rss : rss_max;
		}
	}
	bystander_check(&fx->by);
	json_t *child = client_by_pid(fx->by.c, pid);
	assert_non_null(child);
	json_int_t queued = json_int_of(child, "queued_events");
	assert_int_equal(json_int_of(child, "registrations"), STOP_FDS + 1);
	json_decref(child);
	long rss = rdt_rss_kib(g_daemon.pid);
	rss_max = rss > rss_max ? rss : rss_max;
	print_message("stopped client: %lld records queued for it; daemon RSS %ld KiB -> max %ld KiB\n",
		      (long long)queued, rss0, rss_max);
	/* Coalesced: at most one record per registration waits. */
	assert_true(queued <= STOP_FDS + 1);
	assert_true(rss_max - rss0 < RSS_SLACK_KIB);
	bystander_check(&fx->by);

	/* Continued: it catches up, and the marker's answer comes. */
	assert_int_equal(kill(pid, SIGCONT), 0);
	assert_int_equal(write(marker, &one, sizeof(one)), sizeof(one));
	assert_int_equal(read_byte(sync[0]), 'M');

	/* Killed: everything of it goes. */
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	fx->child = 0;
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);

	for (int i = 0; i < STOP_FDS; i++)
		close(efd[i]);
	close(marker);
	close(sync[0]);
	close(sync[1]);
	finish(fx);
}

/* ---- another client's tokens */

/* Tokens are per connection: client A naming a token that client B registered finds
 * nothing (ENOENT for DEL, MOD and REARM, alone or in a batch), registers its own under
 * the same number without clashing, and B's registration is unchanged: same interest,
 * still armed as B left it, still deletable by B. */
static void test_other_clients_tokens(void **state)
{
	struct fixture *fx = *state;
	rd_client *a, *b;
	int sp[2], q[2];

	int base = rdt_count_fds(g_daemon.pid);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
	assert_int_equal(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(rd_open(&a, g_daemon.sock), 0);
	assert_int_equal(rd_open(&b, g_daemon.sock), 0);
	/* B: a socket, readable only (it is always writable), edge; a pipe, oneshot. */
	assert_int_equal(rd_add(b, sp[0], 42, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(b, q[0], 43, RD_READABLE, RD_ONESHOT), 0);

	assert_int_equal(rd_modify(a, 42, RD_READABLE | RD_WRITABLE, RD_EDGE), -ENOENT);
	assert_int_equal(rd_rearm(a, 43), -ENOENT);
	assert_int_equal(rd_delete(a, 42), -ENOENT);
	struct rd_entry e[2] = {
		{ .token = 42, .interest = RD_WRITABLE, .flags = RD_ONESHOT },
		{ .token = 43, .interest = RD_WRITABLE },
	};
	assert_int_equal(rd_modify_batch(a, e, 2), 0);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, -ENOENT);
	assert_int_equal(rd_rearm_batch(a, e, 2), 0);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, -ENOENT);
	assert_int_equal(rd_delete_batch(a, e, 2), 0);
	assert_int_equal(e[0].status, -ENOENT);
	assert_int_equal(e[1].status, -ENOENT);
	/* A's own 42 is its own; deleting it leaves B's. */
	assert_int_equal(rd_add(a, q[0], 42, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_delete(a, 42), 0);
	assert_int_equal(rd_delete(a, 42), -ENOENT);

	/* B's 42 is still readable-only, edge: a byte reports readable, never writable. */
	assert_int_equal(write(sp[1], "x", 1), 1);
	assert_int_equal(wait_token(b, 42) & (RD_READABLE | RD_WRITABLE), RD_READABLE);
	/* B's 43 is still armed: it reports, and B's own re-arm reports it again. */
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(b, 43) & RD_READABLE);
	json_t *j = control(b, "{\"command\":\"registrations\"}");
	assert_int_equal(json_int_of(j, "total"), 2);
	json_decref(j);
	assert_int_equal(rd_rearm(b, 43), 0);
	assert_true(wait_token(b, 43) & RD_READABLE);
	bystander_check(&fx->by);
	assert_int_equal(rd_delete(b, 42), 0);
	assert_int_equal(rd_delete(b, 43), 0);

	rd_close(a);
	rd_close(b);
	assert_int_equal(rdt_wait_fds(g_daemon.pid, base), base);
	close(sp[0]);
	close(sp[1]);
	close(q[0]);
	close(q[1]);
	finish(fx);
}

/* ---- a connection handed to another process */

/* Pass fd over sock (one byte, SCM_RIGHTS); take one back. */
static int recv_fd(int sock)
{
	uint8_t buf[16];
	struct rdp_rx rx;
	struct pollfd p = { .fd = sock, .events = POLLIN };
	if (poll(&p, 1, WAIT_MS) != 1)
		return -ETIMEDOUT;
	int r = rdp_recv(sock, buf, sizeof(buf), &rx, false);
	if (r <= 0)
		return r < 0 ? r : -EPIPE;
	if (rx.nfds != 1) {
		rdp_rx_close_fds(&rx);
		return -EPROTO;
	}
	return rx.fds[0];
}

static void drop_to_nobody(void)
{
	if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
		_exit(20);
}

/* The daemon knows a connection by the SO_PEERCRED of the process that connected, read at
 * accept: whoever holds the socket later is served as the connector, in the control plane
 * and under the policy and the limits. (1) nobody connects and hands the socket to root:
 * it is nobody's (its uid and pid), held to nobody's registration quota, and may not
 * administer. (2) root connects and hands the socket to a process running as nobody,
 * under a policy that lets only root connect: nobody's own connection is refused, the
 * handed one is served as root's, with root's exemption from the quota. */
/* A connection that nobody (uid 65534) made to the extra daemon, handed over to us over
 * sp and adopted into *h: served as nobody's. Returns the pid that made it. */
static pid_t adopt_nobodys(struct fixture *fx, int sp[2], rd_client **h)
{
	int st;
	assert_int_equal(chmod(fx->extra.dir, 0755), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		drop_to_nobody();
		int s = rdt_connect(fx->extra.sock);
		if (s < 0)
			_exit(21);
		_exit(rdt_send(sp[1], "c", 1, &s, 1) == 0 ? 0 : 22);
	}
	fx->child = pid;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	fx->child = 0;
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	int s = recv_fd(sp[0]);
	assert_true(s >= 0);
	assert_int_equal(rd_adopt(h, s), 0);
	return pid;
}

/* Skips without root. An extra daemon whose uids may hold 3 registrations, and a
 * connection to it that nobody made (in process *maker, when not NULL), adopted into *h.
 * Returns the extra daemon's idle fd count, for extra_stop. */
static int start_nobodys(struct fixture *fx, int sp[2], rd_client **h, pid_t *maker)
{
	if (geteuid() != 0) {
		print_message("SKIP: needs root to change uid\n");
		skip();
	}
	int idle = extra_start(fx, "{\"limits\":{\"registrations_per_uid\":3}}");
	pid_t pid = adopt_nobodys(fx, sp, h);
	if (maker)
		*maker = pid;
	return idle;
}

static void test_connection_handed_over(void **state)
{
	struct fixture *fx = *state;
	int sp[2];
	rd_client *h;

	/* (1) */
	pid_t pid;
	int idle = start_nobodys(fx, sp, &h, &pid);
	json_t *self = client_self(h);
	assert_int_equal(json_int_of(self, "uid"), 65534);
	assert_int_equal(json_int_of(self, "pid"), pid);
	json_decref(self);
	/* It sees nobody's connections only: not root's bystander. */
	json_t *j = control(h, "{\"command\":\"clients\"}");
	assert_int_equal(json_array_size(json_object_get(j, "clients")), 1);
	json_decref(j);
	/* The quota of nobody, which root is not held to. */
	int q[2], s, st;
	assert_int_equal(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(rd_add(h, q[0], (uint64_t)i + 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(h, q[0], 4, RD_READABLE, RD_EDGE), -EDQUOT);
	/* Not an admin. */
	j = control(h, "{\"command\":\"reload\"}");
	assert_false(json_is_true(json_object_get(j, "ok")));
	assert_non_null(strstr(json_string_value(json_object_get(j, "error")), "permission denied"));
	json_decref(j);
	/* Served all the same. */
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(h, 1) & RD_READABLE);
	bystander_check(&fx->by_extra);
	rd_close(h);
	close(sp[0]);
	close(sp[1]);
	extra_stop(fx, idle);

	/* (2) */
	idle = extra_start(fx, "{\"limits\":{\"registrations_per_uid\":3},"
			       "\"policy\":{\"allow_uids\":[0]}}");
	assert_int_equal(chmod(fx->extra.dir, 0755), 0);
	s = rdt_connect(fx->extra.sock);
	assert_true(s >= 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		drop_to_nobody();
		/* After the uid change, which clears it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		rd_client *own;
		/* nobody's own connection: refused by the policy. */
		if (rd_open(&own, fx->extra.sock) != -EACCES)
			_exit(30);
		if (rd_adopt(&h, s) != 0)
			_exit(31);
		int p[2];
		if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
			_exit(32);
		/* Root's: past nobody's quota. */
		for (int i = 0; i < 5; i++)
			if (rd_add(h, p[0], (uint64_t)i + 1, RD_READABLE, RD_EDGE) != 0)
				_exit(33);
		char *text = NULL;
		if (rd_control(h, "{\"command\":\"clients\"}", &text) != 0)
			_exit(34);
		json_t *cj = json_loads(text, 0, NULL);
		free(text);
		json_t *arr = json_object_get(cj, "clients"), *x;
		size_t i;
		int mine = 0;
		json_array_foreach(arr, i, x) {
			if (!json_is_true(json_object_get(x, "self")))
				continue;
			mine++;
			if (json_integer_value(json_object_get(x, "uid")) != 0 ||
			    json_integer_value(json_object_get(x, "pid")) != getppid())
				_exit(35);
		}
		/* Root's view: everyone, the bystander too. */
		if (mine != 1 || json_array_size(arr) < 2)
			_exit(36);
		json_decref(cj);
		if (write(p[1], "x", 1) != 1)
			_exit(37);
		struct rd_event ev;
		if (rd_wait(h, &ev, 1, WAIT_MS) != 1 || ev.token < 1 || ev.token > 5)
			_exit(38);
		rd_close(h);
		_exit(0);
	}
	fx->child = pid;
	close(s);
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	fx->child = 0;
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) != 0)
		fail_msg("the process running as nobody on root's connection failed, step %d",
			 WEXITSTATUS(st));
	bystander_check(&fx->by_extra);
	close(q[0]);
	close(q[1]);
	extra_stop(fx, idle);
	finish(fx);
}


/* A group holds a descriptor of its own, so it counts as one registration of the uid
 * that makes it: joining each registration to a group of its own must not let a uid at
 * its quota hold twice its share (and, with the default quota of half the daemon's
 * descriptors, all of them). */
static void test_groups_count_in_uid_quota(void **state)
{
	struct fixture *fx = *state;
	int sp[2];
	rd_client *h;
	int idle = start_nobodys(fx, sp, &h, NULL);
	int q[2];
	assert_int_equal(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(rd_add(h, q[0], 1, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(h, q[0], 2, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(h, 1, "a"), 0);          /* 2 registrations + 1 group */
	assert_int_equal(rd_join(h, 2, "b"), -EDQUOT);    /* a second group: over */
	assert_int_equal(rd_add(h, q[0], 3, RD_READABLE, RD_ONESHOT), -EDQUOT);
	/* Joining a group that exists costs nothing. */
	assert_int_equal(rd_join(h, 2, "a"), 0);
	/* The group ends with its last member, and gives its share back. */
	assert_int_equal(rd_delete(h, 1), 0);
	assert_int_equal(rd_delete(h, 2), 0);
	assert_int_equal(rd_add(h, q[0], 4, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_add(h, q[0], 5, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(h, 4, "c"), 0);
	assert_int_equal(rd_add(h, q[0], 6, RD_READABLE, RD_ONESHOT), -EDQUOT);
	/* Still served: the member is woken through its group. */
	assert_int_equal(write(q[1], "x", 1), 1);
	assert_true(wait_token(h, 4) & RD_READABLE);
	bystander_check(&fx->by_extra);
	rd_close(h);
	close(q[0]);
	close(q[1]);
	close(sp[0]);
	close(sp[1]);
	extra_stop(fx, idle);
	finish(fx);
}

/* ---- configs that do not parse */

static const char *readyd_bin(void)
{
	const char *bin = getenv("READYD_BIN");
	return bin ? bin : "build/bin/readyd";
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

/* Run readyd with --config cfg on socket sock until it exits (bounded); its stderr into
 * err. Returns its exit status. */
static int run_with_config(const char *cfg, const char *sock, char *err, size_t cap)
{
	int pe[2];
	assert_int_equal(pipe2(pe, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pe[1], STDERR_FILENO);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(readyd_bin(), readyd_bin(), "--socket", sock, "--config", cfg, "--log-level",
		      "warning", (char *)NULL);
		_exit(127);
	}
	close(pe[1]);
	size_t len = 0;
	for (;;) {
		struct pollfd p = { .fd = pe[0], .events = POLLIN };
		if (poll(&p, 1, WAIT_MS) != 1)
			break;
		ssize_t n = read(pe[0], err + len, cap - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == cap - 1)
			break;
	}
	err[len] = '\0';
	close(pe[0]);
	int st = 0;
	if (rdt_waitpid(pid, &st, WAIT_MS) != pid) /* killed meanwhile */
		fail_msg("readyd did not exit within %d ms with config %s", WAIT_MS, cfg);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* '{"limits": ' then 'open' 'depth' times, a 1, 'close' as many times, then '}'. */
static char *nested(const char *open, const char *close_, int depth)
{
	size_t ol = strlen(open), cl = strlen(close_);
	char *s = malloc(32 + (ol + cl) * (size_t)depth);
	assert_non_null(s);
	char *w = s + sprintf(s, "{\"limits\": ");
	for (int i = 0; i < depth; i++, w += ol)
		memcpy(w, open, ol);
	*w++ = '1';
	for (int i = 0; i < depth; i++, w += cl)
		memcpy(w, close_, cl);
	strcpy(w, "}\n");
	return s;
}

/* How many times 'needle' occurs in the file at path. */
static int count_in_file(const char *path, const char *needle)
{
	char buf[65536];
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	int k = 0;
	for (const char *p = buf; (p = strstr(p, needle)); p += strlen(needle))
		k++;
	return k;
}

/* A config that is not JSON, has a duplicate key, or nests 10,000 deep: readyd does not
 * start (exit 1, one line naming the file, the line and column, and what is wrong, and no
 * socket). Loaded again on SIGHUP, the same files leave the running daemon as it was: it
 * says why, keeps its limits and serves its clients; a good file then applies. */
static void test_bad_config(void **state)
{
	struct fixture *fx = *state;
	char dir[] = "/tmp/readyd-badcfg-XXXXXX", cfg[96], sock[96], log[96], err[4096];
	struct {
		const char *what;
		char *text;
		const char *says;
	} bad[] = {
		{ "bad JSON", strdup("{\"limits\": {\"registrations_per_client\": 9,}}\n"),
		  "line 1, column" },
		{ "bad JSON", strdup("{\"limits\": {\"registrations_per_client\" 9}}\n"),
		  "line 1, column" },
		{ "duplicate key", strdup("{\"limits\": {\"registrations_per_client\": 9,\n"
					  "            \"registrations_per_client\": 10}}\n"),
		  "duplicate object key" },
		{ "duplicate key",
		  strdup("{\"policy\": {\"allow_uids\": [0]}, \"policy\": {\"allow_uids\": [1]}}\n"),
		  "duplicate object key" },
		{ "10,000 arrays deep", nested("[", "]", 10000), "maximum parsing depth" },
		{ "10,000 objects deep", nested("{\"a\":", "}", 10000), "maximum parsing depth" },
	};
	enum { NBAD = sizeof(bad) / sizeof(bad[0]) };

	assert_non_null(mkdtemp(dir));
	snprintf(cfg, sizeof(cfg), "%s/readyd.json", dir);
	snprintf(sock, sizeof(sock), "%s/readyd.sock", dir);
	snprintf(log, sizeof(log), "%s/stderr", dir);

	/* At start. */
	for (int i = 0; i < NBAD; i++) {
		assert_non_null(bad[i].text);
		write_file(cfg, bad[i].text);
		int st = run_with_config(cfg, sock, err, sizeof(err));
		if (st != 1)
			fail_msg("%s: readyd exited %d, not 1 (stderr: %s)", bad[i].what, st, err);
		char prefix[160];
		snprintf(prefix, sizeof(prefix), "readyd: %s: line ", cfg);
		if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, bad[i].says) ||
		    strchr(err, '\n') != err + strlen(err) - 1)
			fail_msg("%s: expected one line \"%s...%s...\", got \"%s\"", bad[i].what,
				 prefix, bad[i].says, err);
		struct stat sst;
		assert_int_equal(stat(sock, &sst), -1);
	}
	unlink(cfg);

	/* On SIGHUP: a daemon of its own, its stderr in a file. */
	int saved = dup(STDERR_FILENO);
	int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(saved >= 0 && logfd >= 0);
	assert_int_equal(dup2(logfd, STDERR_FILENO), STDERR_FILENO);
	int r = rdt_daemon_start(&fx->extra, "{\"limits\": {\"registrations_per_client\": 7}}");
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(logfd);
	assert_int_equal(r, 0);
	int idle = daemon_settle(&fx->extra);
	assert_true(idle > 0);
	bystander_open(&fx->by_extra, fx->extra.sock);
	rd_client *c;
	assert_int_equal(rd_open(&c, fx->extra.sock), 0);
	json_t *j = control(c, "{\"command\":\"limits\"}");
	assert_int_equal(json_int_of(j, "registrations_per_client"), 7);
	json_decref(j);

	const char *kept = "keeping the running configuration";
	for (int i = 0; i < NBAD; i++) {
		write_file(fx->extra.config, bad[i].text);
		assert_int_equal(kill(fx->extra.pid, SIGHUP), 0);
		/* Wait (bounded) until the daemon has said why it kept the old one. */
		int n = 0;
		for (int k = 0; k < WAIT_MS / 10 && (n = count_in_file(log, kept)) < i + 1; k++)
			nap_ms(10);
		if (n != i + 1)
			fail_msg("%s: the daemon said \"%s\" %d times after %d reloads", bad[i].what,
				 kept, n, i + 1);
		assert_true(count_in_file(log, bad[i].says) >= 1);
		assert_int_equal(kill(fx->extra.pid, 0), 0);
		j = control(c, "{\"command\":\"limits\"}");
		assert_int_equal(json_int_of(j, "registrations_per_client"), 7);
		json_decref(j);
		bystander_check(&fx->by_extra);
	}
	/* Through the control plane too: an error that says why, and the old limits. */
	j = control(fx->by_extra.c, "{\"command\":\"reload\"}");
	assert_false(json_is_true(json_object_get(j, "ok")));
	assert_non_null(strstr(json_string_value(json_object_get(j, "error")),
			       bad[NBAD - 1].says));
	json_decref(j);

	/* A good file applies: the reloads above were read, and refused. */
	write_file(fx->extra.config, "{\"limits\": {\"registrations_per_client\": 9}}");
	assert_int_equal(kill(fx->extra.pid, SIGHUP), 0);
	json_int_t now = 0;
	for (int k = 0; k < WAIT_MS / 10 && now != 9; k++) {
		j = control(c, "{\"command\":\"limits\"}");
		now = json_int_of(j, "registrations_per_client");
		json_decref(j);
		if (now != 9)
			nap_ms(10);
	}
	assert_int_equal(now, 9);
	rd_close(c);
	bystander_check(&fx->by_extra);

	extra_stop(fx, idle);
	unlink(log);
	rmdir(dir);
	for (int i = 0; i < NBAD; i++)
		free(bad[i].text);
	finish(fx);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_epoll_fd_and_cycle),
		T(test_own_connection_registered),
		T(test_socket_with_fds_in_flight),
		T(test_same_file_twice),
		T(test_always_ready_no_busy_loop),
		T(test_nonblock_flipped),
		T(test_sigstopped_client),
		T(test_other_clients_tokens),
		T(test_connection_handed_over),
		T(test_groups_count_in_uid_quota),
		T(test_bad_config),
	};
	int failed = cmocka_run_group_tests_name("hostile2", tests, group_setup, group_teardown);
	return failed + (g_daemon_exit != 0);
}
