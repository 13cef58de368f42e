/* examples/prefork-server against a real daemon: four workers share one listening
 * socket through a readyd group, and 40 sequential connections over loopback are each
 * answered, each wake exactly one worker (no spurious wakeup, by the workers' own count
 * and by the daemon's), and are spread round-robin over all four. SIGTERM to the parent
 * stops the workers and exits 0, and the daemon is back to its idle fd count. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "harness.h"

#define PATIENCE_MS 10000
#define WORKERS 4
#define CONNS 40

static struct rdt_daemon daemon_;
static struct rdt_fds fds_;
static pid_t server_pid; /* the prefork-server this test started, until reaped */
static int server_out = -1; /* the read end of its stdout, until closed */
static char server_bin[512];

/* prefork-server sits next to the readyd under test: $PREFORK_BIN, else the directory of
 * $READYD_BIN, else build/bin. */
static int prefork_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	const char *bin = getenv("PREFORK_BIN"), *rd = getenv("READYD_BIN");
	if (bin)
		snprintf(server_bin, sizeof(server_bin), "%s", bin);
	else if (rd && strrchr(rd, '/'))
		snprintf(server_bin, sizeof(server_bin), "%.*s/prefork-server",
			 (int)(strrchr(rd, '/') - rd), rd);
	else
		snprintf(server_bin, sizeof(server_bin), "build/bin/prefork-server");
	if (access(server_bin, X_OK) < 0) {
		fprintf(stderr, "%s: %s (make builds it)\n", server_bin, strerror(errno));
		return -1;
	}
	return rdt_daemon_start(&daemon_, NULL) == 0 ? 0 : -1;
}

static int prefork_teardown(void **state)
{
	(void)state;
	return rdt_daemon_stop(&daemon_) == 0 ? 0 : -1;
}

static int setup(void **state)
{
	(void)state;
	rdt_fds_snapshot(&fds_, daemon_.pid);
	return 0;
}

/* Stop a server a failed test left behind (by its pid; its workers follow it), then
 * check every fd came back. */
static int teardown(void **state)
{
	(void)state;
	if (server_pid > 0) {
		kill(server_pid, SIGKILL);
		(void)rdt_waitpid(server_pid, NULL, RDT_EXIT_MS);
		server_pid = 0;
	}
	if (server_out >= 0) {
		close(server_out);
		server_out = -1;
	}
	rdt_fds_assert_back(&fds_, daemon_.pid);
	return 0;
}

/* Start prefork-server on readyd socket 'sock', its stdout on a pipe whose read end is
 * returned in *out; 'quiet' sends its stderr to /dev/null. */
static pid_t server_start(const char *sock, int *out, bool quiet)
{
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid_t parent = getpid();
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM); /* it outlives no failed test */
		if (getppid() != parent)
			_exit(127);
		dup2(p[1], 1);
		if (quiet) {
			int null = open("/dev/null", O_WRONLY);
			if (null >= 0)
				dup2(null, 2);
		}
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(server_bin, "prefork-server", "--socket", sock, "--port", "0", "--workers", "4",
		      "--stats", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	*out = server_out = p[0];
	server_pid = pid;
	return pid;
}

/* One line of fd, within PATIENCE_MS: its length, 0 at end of file, -ETIMEDOUT. */
static int read_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	for (int waited = 0; n + 1 < cap;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, 100);
		if (r == 0 && (waited += 100) >= PATIENCE_MS)
			return -ETIMEDOUT;
		if (r <= 0)
			continue;
		ssize_t got = read(fd, buf + n, 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

/* Wait for the server's exit, bounded; returns its wait status. */
static int server_wait(pid_t pid)
{
	int st = -1;
	pid_t w = rdt_waitpid(pid, &st, PATIENCE_MS); /* killed when it does not exit */
	server_pid = 0;
	if (w != pid)
		fail_msg("prefork-server (pid %d) did not exit within %d ms", (int)pid, PATIENCE_MS);
	return st;
}

/* Connect to 127.0.0.1:port, read the whole answer (bounded) and return the worker that
 * gave it, or -1. */
static int ask(uint16_t port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_true(s >= 0);
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	char buf[128];
	int r = read_line(s, buf, sizeof(buf));
	/* Then the worker closes: end of file. */
	char more;
	struct pollfd p = { .fd = s, .events = POLLIN };
	assert_int_equal(poll(&p, 1, PATIENCE_MS), 1);
	assert_int_equal(read(s, &more, 1), 0);
	close(s);
	unsigned k;
	if (r <= 0 || sscanf(buf, "hello from worker %u\n", &k) != 1)
		return -1;
	return (int)k;
}

/* Events the daemon delivered to each prefork-server connection, by its client pid. */
static int daemon_events(rd_client *c, long *events, pid_t *pids, int max)
{
	char *text = NULL;
	assert_int_equal(rd_control(c, "{\"command\":\"clients\"}", &text), 0);
	json_t *root = json_loads(text, 0, NULL);
	free(text);
	assert_non_null(root);
	json_t *arr = json_object_get(root, "clients"), *o;
	size_t i;
	int n = 0;
	json_array_foreach(arr, i, o) {
		if (strcmp(json_string_value(json_object_get(o, "comm")), "prefork-server") != 0)
			continue;
		assert_true(n < max);
		events[n] = (long)json_integer_value(json_object_get(o, "events_delivered"));
		pids[n] = (pid_t)json_integer_value(json_object_get(o, "pid"));
		n++;
	}
	json_decref(root);
	return n;
}

static void test_one_worker_per_connection(void **state)
{
	(void)state;
	int out;
	pid_t pid = server_start(daemon_.sock, &out, false);
	char line[256];
	unsigned port = 0, nw = 0;
	assert_true(read_line(out, line, sizeof(line)) > 0);
	assert_int_equal(sscanf(line, "prefork-server: listening on 127.0.0.1:%u with %u workers",
				&port, &nw), 2);
	assert_int_equal(nw, WORKERS);
	assert_true(port > 0 && port < 65536);

	/* Every connection is answered, by one of the four. The woken worker re-arms before
	 * it answers, so all four are armed when the next connection comes: round-robin
	 * then gives each exactly a quarter. */
	int served[WORKERS] = { 0 };
	for (int k = 0; k < CONNS; k++) {
		int who = ask((uint16_t)port);
		assert_true(who >= 1 && who <= WORKERS);
		served[who - 1]++;
	}
	for (int i = 0; i < WORKERS; i++)
		assert_int_equal(served[i], CONNS / WORKERS);

	/* The daemon's own count: exactly one event per connection, to four connections. */
	rd_client *c;
	long events[8];
	pid_t wpids[8];
	assert_int_equal(rd_open(&c, daemon_.sock), 0);
	int nc = daemon_events(c, events, wpids, 8);
	rd_close(c);
	assert_int_equal(nc, WORKERS);
	long total = 0;
	for (int i = 0; i < nc; i++) {
		assert_int_equal(events[i], CONNS / WORKERS);
		total += events[i];
	}
	assert_int_equal(total, CONNS);

	/* SIGTERM: the parent stops its workers and exits 0, printing what they reported. */
	assert_int_equal(kill(pid, SIGTERM), 0);
	int st = server_wait(pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	unsigned long acc_sum = 0, wake_sum = 0, spur_sum = 0;
	int lines = 0;
	bool saw_total = false;
	while (read_line(out, line, sizeof(line)) > 0) {
		unsigned k, acc, wake, spur;
		int wp;
		unsigned long ta, tw, ts;
		if (sscanf(line, "prefork-server: worker %u (pid %d): connections %u, wakeups %u, spurious %u",
			   &k, &wp, &acc, &wake, &spur) == 5) {
			assert_true(k >= 1 && k <= WORKERS);
			assert_int_equal(acc, served[k - 1]);
			assert_int_equal(wake, acc);   /* one wakeup per connection ... */
			assert_int_equal(spur, 0);     /* ... and none for nothing */
			bool known = false;
			for (int i = 0; i < nc; i++)
				known |= wpids[i] == wp;
			assert_true(known);
			/* Stopped and reaped by the parent. */
			assert_int_equal(kill(wp, 0), -1);
			assert_int_equal(errno, ESRCH);
			acc_sum += acc;
			wake_sum += wake;
			spur_sum += spur;
			lines++;
		} else if (sscanf(line, "prefork-server: total: connections %lu, wakeups %lu, spurious %lu",
				  &ta, &tw, &ts) == 3) {
			assert_int_equal(ta, CONNS);
			assert_int_equal(tw, CONNS);
			assert_int_equal(ts, 0);
			saw_total = true;
		} else {
			fail_msg("unexpected output: %s", line);
		}
	}
	close(out);
	server_out = -1;
	assert_int_equal(lines, WORKERS);
	assert_true(saw_total);
	assert_int_equal(acc_sum, CONNS);
	assert_int_equal(wake_sum, CONNS);
	assert_int_equal(spur_sum, 0);
	/* The workers' connections, registrations and the group's own copy are gone. */
	assert_int_equal(rdt_wait_fds(daemon_.pid, rdt_idle_fds(daemon_.pid)), rdt_idle_fds(daemon_.pid));
}

/* Without a daemon the workers cannot join: the server says so and exits 1, without
 * announcing a port. */
static void test_no_daemon(void **state)
{
	(void)state;
	char sock[sizeof(daemon_.dir) + 16];
	snprintf(sock, sizeof(sock), "%s/absent.sock", daemon_.dir);
	int out;
	pid_t pid = server_start(sock, &out, true);
	int st = server_wait(pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	char line[256];
	while (read_line(out, line, sizeof(line)) > 0)
		assert_null(strstr(line, "listening"));
	close(out);
	server_out = -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_one_worker_per_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_daemon, setup, teardown),
	};
	return cmocka_run_group_tests_name("prefork", tests, prefork_setup, prefork_teardown);
}
