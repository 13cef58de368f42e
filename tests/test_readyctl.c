/* Integration tests of readyctl against a real readyd: top's plain snapshots and its JSON
 * with a non-tty stdout, its raw-mode terminal on a pty (q quits, SIGTERM kills, and the
 * terminal comes back either way), and its usage errors. Every test is wrapped in an fd
 * check of this process and of the daemon. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../client/readyd.h"
#include "harness.h"

static struct rdt_daemon daemon_;
static struct rdt_fds fds_;
static char readyctl_[512];

/* Long enough that a healthy readyctl always answers first; only a bound on failure. */
#define PATIENCE_MS 10000

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	/* readyctl sits next to the readyd under test, unless told otherwise. */
	const char *bin = getenv("READYCTL_BIN"), *rd = getenv("READYD_BIN");
	if (bin)
		snprintf(readyctl_, sizeof(readyctl_), "%s", bin);
	else if (rd) {
		char dir[512];
		snprintf(dir, sizeof(dir), "%s", rd);
		snprintf(readyctl_, sizeof(readyctl_), "%s/readyctl", dirname(dir));
	} else
		snprintf(readyctl_, sizeof(readyctl_), "build/bin/readyctl");
	return rdt_daemon_start(&daemon_, NULL) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
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

static int teardown(void **state)
{
	(void)state;
	rdt_fds_assert_back(&fds_, daemon_.pid);
	return 0;
}

static void nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Run readyctl with args (stdin /dev/null, stdout a pipe, stderr with it), bounded by
 * timeout(1). Returns its exit status; its output is in out. */
static int run_readyctl(const char *args, char *out, size_t cap)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "exec timeout 30 %s --socket %s %s </dev/null 2>&1", readyctl_,
		 daemon_.sock, args);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	size_t n = fread(out, 1, cap - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* A client that makes readyd deliver events all the time: a pipe in edge mode, a byte
 * written and read back every millisecond. Named "busy-client"; gone with its parent,
 * and after 60 s in any case. */
static pid_t start_busy_client(void)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid > 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_NAME, "busy-client");
	rd_client *c = NULL;
	int p[2];
	if (rd_open(&c, daemon_.sock) < 0 || pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0 ||
	    rd_add(c, p[0], 7, RD_READABLE, RD_EDGE) < 0)
		_exit(1);
	for (int i = 0; i < 60000; i++) {
		struct rd_event ev;
		char b[16];
		if (write(p[1], "x", 1) != 1 || rd_wait(c, &ev, 1, 1000) < 0)
			_exit(1);
		while (read(p[0], b, sizeof(b)) > 0)
			;
		nap_ms(1);
	}
	_exit(0);
}

static void stop_busy_client(pid_t pid)
{
	int st;
	kill(pid, SIGKILL);
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
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

/* Wait until the busy client is connected and has had events delivered. */
static void wait_busy(rd_client *c)
{
	for (int i = 0; i < 500; i++) {
		json_t *j = control(c, "{\"command\":\"clients\"}");
		size_t k;
		json_t *cl;
		bool busy = false;
		json_array_foreach(json_object_get(j, "clients"), k, cl) {
			const char *comm = json_string_value(json_object_get(cl, "comm"));
			if (comm && strcmp(comm, "busy-client") == 0 &&
			    json_integer_value(json_object_get(cl, "events_delivered")) > 0)
				busy = true;
		}
		json_decref(j);
		if (busy)
			return;
		nap_ms(10);
	}
	fail_msg("the busy client never got an event");
}

/* The next line of text at *p, which is advanced past it; NULL at the end. */
static char *next_line(char **p)
{
	if (!*p || !**p)
		return NULL;
	char *line = *p, *nl = strchr(line, '\n');
	if (nl) {
		*nl = '\0';
		*p = nl + 1;
	} else
		*p = line + strlen(line);
	return line;
}

/* top -n 2 with stdout a pipe: two plain snapshots separated by a blank line; the first
 * knows no rates yet, the second puts the busy client first with a rate and the idle one
 * after it at 0.0; readyctl itself is not listed; no escape codes. */
static void test_top_snapshots(void **state)
{
	(void)state;
	rd_client *idle = NULL;
	assert_int_equal(rd_open(&idle, daemon_.sock), 0);
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(idle, p[0], 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_add(idle, p[1], 2, RD_WRITABLE, RD_ONESHOT), 0);
	pid_t busy = start_busy_client();
	wait_busy(idle);

	static char out[16384];
	int rc = run_readyctl("top -n 2", out, sizeof(out));
	stop_busy_client(busy);
	if (rc != 0)
		fail_msg("readyctl top -n 2 exited %d:\n%s", rc, out);
	assert_null(strchr(out, '\033'));

	int frames = 0, blank = 0, rows = 0;
	char *cur = out, *line;
	while ((line = next_line(&cur))) {
		if (strncmp(line, "readyd ", 7) == 0) {
			frames++;
			assert_non_null(strstr(line, ", pid "));
			rows = 0;
			continue;
		}
		if (line[0] == '\0') {
			blank++;
			continue;
		}
		if (strncmp(line, "clients: ", 9) == 0) {
			/* Totals: busy, idle and this readyctl; 3 registrations. */
			assert_non_null(strstr(line, "clients: 3  registrations: 3  events/s: "));
			char *rate = strstr(line, "events/s: ") + 10;
			if (frames == 1)
				assert_true(strncmp(rate, "- ", 2) == 0);
			else
				assert_true(strtod(rate, NULL) > 0);
			continue;
		}
		if (strstr(line, "COMMAND")) {
			assert_non_null(strstr(line, "EVENTS/S"));
			continue;
		}
		/* A client row: ID PID UID COMMAND REGS QUEUED EVENTS/S DELIVERED. */
		long long id, pid, uid, regs, queued, delivered;
		char comm[32], rate[32];
		assert_int_equal(sscanf(line, "%lld %lld %lld %31s %lld %lld %31s %lld", &id, &pid,
					&uid, comm, &regs, &queued, rate, &delivered),
				 8);
		assert_string_not_equal(comm, "readyctl");
		if (frames == 1)
			assert_string_equal(rate, "-");
		else if (rows == 0) {
			assert_string_equal(comm, "busy-client");
			assert_int_equal(pid, busy);
			assert_true(strtod(rate, NULL) > 0);
		} else {
			assert_string_equal(comm, "test-readyctl");
			assert_int_equal(regs, 2);
			assert_string_equal(rate, "0.0");
		}
		rows++;
	}
	assert_int_equal(frames, 2);
	/* One blank line under each totals, one between the snapshots. */
	assert_int_equal(blank, 3);
	assert_int_equal(rows, 2);

	rd_close(idle);
	close(p[0]);
	close(p[1]);
}

/* top --json: one object per refresh, rates null first and numbers after, "top" sorted
 * by rate, the totals as status gives them. */
static void test_top_json(void **state)
{
	(void)state;
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, daemon_.sock), 0);
	pid_t busy = start_busy_client();
	wait_busy(c);
	static char out[16384];
	int rc = run_readyctl("--json top --iterations 2 --delay 0.3", out, sizeof(out));
	stop_busy_client(busy);
	if (rc != 0)
		fail_msg("readyctl --json top exited %d:\n%s", rc, out);

	char *cur = out, *line;
	int n = 0;
	while ((line = next_line(&cur))) {
		json_error_t err;
		json_t *j = json_loads(line, 0, &err);
		if (!j)
			fail_msg("not JSON: %s (%s)", line, err.text);
		assert_int_equal(json_integer_value(json_object_get(j, "clients")), 3);
		assert_int_equal(json_integer_value(json_object_get(j, "registrations")), 1);
		assert_true(json_integer_value(json_object_get(j, "events_delivered")) > 0);
		assert_true(json_integer_value(json_object_get(j, "time_usec")) > 0);
		json_t *rate = json_object_get(j, "events_per_sec");
		json_t *top = json_object_get(j, "top");
		assert_int_equal(json_array_size(top), 2);
		json_t *first = json_array_get(top, 0), *second = json_array_get(top, 1);
		if (n == 0) {
			assert_true(json_is_null(rate));
			assert_true(json_is_null(json_object_get(first, "events_per_sec")));
		} else {
			assert_true(json_is_number(rate) && json_number_value(rate) > 0);
			assert_string_equal(json_string_value(json_object_get(first, "comm")),
					    "busy-client");
			assert_true(json_number_value(json_object_get(first, "events_per_sec")) > 0);
			assert_true(json_number_value(json_object_get(second, "events_per_sec")) == 0);
		}
		assert_int_equal(json_integer_value(json_object_get(first, "registrations")), 1);
		assert_non_null(json_object_get(second, "queued_events"));
		json_decref(j);
		n++;
	}
	assert_int_equal(n, 2);
	rd_close(c);
}

/* Read what the pty master has until 'want' has been seen (0) or the patience runs out. */
static int read_until(int m, const char *want, char *buf, size_t cap)
{
	size_t len = strlen(buf);
	for (int waited = 0; waited < PATIENCE_MS; waited += 50) {
		if (strstr(buf, want))
			return 0;
		struct pollfd pf = { .fd = m, .events = POLLIN };
		if (poll(&pf, 1, 50) == 1) {
			ssize_t r = read(m, buf + len, cap - 1 - len);
			if (r > 0) {
				len += (size_t)r;
				buf[len] = '\0';
				if (len > cap / 2) { /* keep the tail */
					memmove(buf, buf + len - cap / 4, cap / 4 + 1);
					len = cap / 4;
				}
			}
		}
	}
	return strstr(buf, want) ? 0 : -ETIMEDOUT;
}

/* Wait for pid, draining the pty meanwhile; its wait status, or -1 past the patience. */
static int reap(pid_t pid, int m)
{
	char buf[4096];
	for (int waited = 0; waited < PATIENCE_MS; waited += 20) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		while (read(m, buf, sizeof(buf)) > 0)
			;
		nap_ms(20);
	}
	return -1;
}

/* On a terminal: clear and home each frame, keys read in raw mode; q quits with 0,
 * SIGTERM kills with the signal, and the terminal's modes are back as they were. */
static void test_top_terminal(void **state)
{
	(void)state;
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	assert_true(m >= 0);
	assert_int_equal(grantpt(m), 0);
	assert_int_equal(unlockpt(m), 0);
	assert_int_equal(fcntl(m, F_SETFL, O_NONBLOCK), 0);
	int s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
	assert_true(s >= 0);
	struct winsize ws = { .ws_row = 24, .ws_col = 100 };
	assert_int_equal(ioctl(s, TIOCSWINSZ, &ws), 0);
	struct termios before, during, after;
	assert_int_equal(tcgetattr(s, &before), 0);
	assert_true(before.c_lflag & ICANON);

	for (int round = 0; round < 2; round++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			dup2(s, STDIN_FILENO);
			dup2(s, STDOUT_FILENO);
			dup2(s, STDERR_FILENO);
			for (int fd = 3; fd < 1024; fd++)
				close(fd);
			execl(readyctl_, readyctl_, "--socket", daemon_.sock, "top", (char *)NULL);
			_exit(127);
		}
		static char buf[65536];
		buf[0] = '\0';
		if (read_until(m, "EVENTS/S", buf, sizeof(buf)) < 0) {
			kill(pid, SIGKILL);
			reap(pid, m);
			fail_msg("no frame on the terminal: %s", buf);
		}
		assert_non_null(strstr(buf, "\033[H\033[2J"));
		assert_int_equal(tcgetattr(s, &during), 0);
		assert_false(during.c_lflag & (ICANON | ECHO));
		int st;
		if (round == 0) {
			assert_int_equal(write(m, "q", 1), 1);
			st = reap(pid, m);
			assert_true(st != -1 && WIFEXITED(st));
			assert_int_equal(WEXITSTATUS(st), 0);
		} else {
			kill(pid, SIGTERM);
			st = reap(pid, m);
			assert_true(st != -1 && WIFSIGNALED(st));
			assert_int_equal(WTERMSIG(st), SIGTERM);
		}
		if (st == -1)
			kill(pid, SIGKILL);
		assert_int_equal(tcgetattr(s, &after), 0);
		assert_int_equal(after.c_lflag, before.c_lflag);
		assert_memory_equal(after.c_cc, before.c_cc, sizeof(before.c_cc));
	}
	close(s);
	close(m);
}

/* A process names itself: the tables show control characters in a command name as '?',
 * so a client cannot send escape sequences to an admin's terminal. */
static void test_control_characters_in_names(void **state)
{
	(void)state;
	int gate[2];
	assert_int_equal(pipe2(gate, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		prctl(PR_SET_NAME, "ev\033[2Jl\a");
		close(gate[1]);
		rd_client *c = NULL;
		if (rd_open(&c, daemon_.sock) < 0)
			_exit(1);
		char b;
		/* Connected until the test closes the gate (or dies). */
		while (read(gate[0], &b, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(gate[0]);
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, daemon_.sock), 0);
	bool seen = false;
	for (int i = 0; i < 500 && !seen; i++) {
		json_t *j = control(c, "{\"command\":\"clients\"}");
		size_t k;
		json_t *cl;
		json_array_foreach(json_object_get(j, "clients"), k, cl) {
			const char *comm = json_string_value(json_object_get(cl, "comm"));
			/* The daemon already hands out printable ASCII only. */
			seen |= comm && strcmp(comm, "ev?[2Jl?") == 0;
		}
		json_decref(j);
		if (!seen)
			nap_ms(10);
	}
	static char out[16384];
	int rc_clients = seen ? run_readyctl("clients", out, sizeof(out)) : -1;
	bool clients_ok = rc_clients == 0 && !strchr(out, '\033') && !strchr(out, '\a') &&
			  strstr(out, " ev?[2Jl? ");
	int rc_top = seen ? run_readyctl("top -n 1", out + 8192, sizeof(out) - 8192) : -1;
	bool top_ok = rc_top == 0 && !strchr(out + 8192, '\033') && strstr(out + 8192, " ev?[2Jl? ");
	close(gate[1]);
	int st;
	assert_int_equal(rdt_waitpid(pid, &st, RDT_EXIT_MS), pid);
	rd_close(c);
	assert_true(seen);
	if (!clients_ok)
		fail_msg("readyctl clients (exit %d):\n%s", rc_clients, out);
	if (!top_ok)
		fail_msg("readyctl top -n 1 (exit %d):\n%s", rc_top, out + 8192);
}

/* Usage errors exit 2 before connecting; no daemon exits 3. */
static void test_top_usage(void **state)
{
	(void)state;
	static char out[4096];
	static const char *const bad[] = {
		"top -n 0", "top --iterations x", "top -d 0", "top --delay -1",
		"top --delay nan", "top extra", "status -n 1", "clients --delay 2",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = run_readyctl(bad[i], out, sizeof(out));
		if (rc != 2)
			fail_msg("readyctl %s: exit %d, want 2: %s", bad[i], rc, out);
	}
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "exec timeout 30 %s --socket %s/none top -n 1 </dev/null 2>&1",
		 readyctl_, daemon_.dir);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 3);
	assert_non_null(strstr(out, "cannot connect"));
}

/* Lines of out that start with a number (a table's rows). */
static int rows(const char *out)
{
	int n = 0;
	for (const char *p = out; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
		while (*p == ' ')
			p++;
		n += *p >= '0' && *p <= '9';
	}
	return n;
}

/* More connections than one answer of "clients" holds (about 400 made it overflow a
 * message): the daemon pages them, readyctl follows the pages; registrations too, with
 * group names that JSON escapes to twice their length. A bad offset and a command name
 * cut in half a character get clear errors. */
static void test_control_pages_and_errors(void **state)
{
	(void)state;
	enum { CONNS = 450, REGS = 300 };
	static char out[1 << 20];
	rd_client *c[CONNS];
	for (int i = 0; i < CONNS; i++)
		assert_int_equal(rd_open(&c[i], daemon_.sock), 0);
	json_t *j = control(c[0], "{\"command\":\"clients\"}");
	assert_true(json_is_true(json_object_get(j, "ok")));
	assert_int_equal(json_integer_value(json_object_get(j, "total")), CONNS);
	assert_int_equal(json_array_size(json_object_get(j, "clients")), 256);
	assert_int_equal(json_integer_value(json_object_get(j, "next_offset")), 256);
	json_decref(j);
	assert_int_equal(run_readyctl("clients", out, sizeof(out)), 0);
	assert_int_equal(rows(out), CONNS + 1); /* and readyctl's own */
	for (int i = 1; i < CONNS; i++)
		rd_close(c[i]);

	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	for (int i = 0; i < REGS; i++) {
		char name[33];
		snprintf(name, sizeof(name), "\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\%03u", (unsigned)i % 1000u);
		assert_int_equal(rd_add(c[0], p[0], (uint64_t)i, RD_READABLE, RD_ONESHOT), 0);
		assert_int_equal(rd_join(c[0], (uint64_t)i, name), 0);
	}
	j = control(c[0], "{\"command\":\"registrations\"}");
	assert_true(json_is_true(json_object_get(j, "ok")));
	assert_int_equal(json_integer_value(json_object_get(j, "total")), REGS);
	size_t first = json_array_size(json_object_get(j, "registrations"));
	assert_int_equal(json_integer_value(json_object_get(j, "next_offset")), (json_int_t)first);
	json_decref(j);
	char args[64];
	j = control(c[0], "{\"command\":\"clients\"}");
	snprintf(args, sizeof(args), "registrations %lld",
		 (long long)json_integer_value(json_object_get(
			 json_array_get(json_object_get(j, "clients"), 0), "id")));
	json_decref(j);
	assert_int_equal(run_readyctl(args, out, sizeof(out)), 0);
	assert_int_equal(rows(out), REGS);

	j = control(c[0], "{\"command\":\"registrations\",\"offset\":-5}");
	assert_string_equal(json_string_value(json_object_get(j, "error")),
			    "\"offset\" must be an integer from 0 up");
	json_decref(j);
	j = control(c[0], "{\"command\":\"clients\",\"offset\":\"abc\"}");
	assert_false(json_is_true(json_object_get(j, "ok")));
	json_decref(j);
	/* 63 bytes of name and then a 2-byte character: cut to 64 bytes, it is mended. */
	j = control(c[0], "{\"command\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\"}");
	assert_non_null(strstr(json_string_value(json_object_get(j, "error")), "unknown command"));
	json_decref(j);

	rd_close(c[0]);
	close(p[0]);
	close(p[1]);
}

/* Usage errors are told before connecting, with or without a daemon; output that cannot
 * be written fails. */
static void test_readyctl_exit_statuses(void **state)
{
	(void)state;
	char out[4096], cmd[1024];
	static const char *const bad[] = { "disconnect", "disconnect abc", "registrations abc",
					   "registrations 9223372036854775808" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(run_readyctl(bad[i], out, sizeof(out)), 2);
		snprintf(cmd, sizeof(cmd),
			 "exec timeout 30 %s --socket /nonexistent/readyd.sock %s 2>/dev/null",
			 readyctl_, bad[i]);
		int st = system(cmd);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 2);
	}
	snprintf(cmd, sizeof(cmd), "exec timeout 30 %s --socket %s status >/dev/full 2>/dev/null",
		 readyctl_, daemon_.sock);
	int st = system(cmd);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_top_snapshots, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_json, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_terminal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_control_characters_in_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_usage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_control_pages_and_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readyctl_exit_statuses, setup, teardown),
	};
	return cmocka_run_group_tests_name("readyctl", tests, group_setup, group_teardown);
}
