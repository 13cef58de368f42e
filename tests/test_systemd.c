/* readyd and its service manager, without a real systemd: socket activation through
 * systemd-socket-activate(1), and the sd_notify protocol read off our own NOTIFY_SOCKET. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "harness.h"

#define PATIENCE_MS 5000

static const char *readyd_bin(void)
{
	return getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd";
}

static char dir_[64];

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir_, sizeof(dir_), "/tmp/readyd-sd-XXXXXX");
	if (!mkdtemp(dir_))
		return -1;
	return rdt_fd_setup(state);
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir_);
	if (system(cmd) != 0)
		return -1;
	return rdt_fd_teardown(state);
}

static bool have(const char *prog)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
	return system(cmd) == 0;
}

static void exercise(rd_client *c)
{
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, 0), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 1);
	close(p[0]);
	close(p[1]);
}

/* systemd-socket-activate binds the SEQPACKET socket and starts readyd on the first
 * connection, passing it with LISTEN_FDS; readyd serves it instead of binding its own. */
static void test_socket_activation(void **state)
{
	(void)state;
	if (!have("systemd-socket-activate"))
		skip();
	char sock[128], unused[128];
	snprintf(sock, sizeof(sock), "%s/activated.sock", dir_);
	snprintf(unused, sizeof(unused), "%s/not-this-one.sock", dir_);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		char listen[160];
		snprintf(listen, sizeof(listen), "--listen=%s", sock);
		/* --socket names a path readyd must not use: the passed socket wins. */
		execlp("systemd-socket-activate", "systemd-socket-activate", "--seqpacket", listen,
		       "--fdname=readyd", readyd_bin(), "--socket", unused, "--log-level", "warning",
		       (char *)NULL);
		_exit(127);
	}
	struct stat st;
	for (int i = 0; i < 500 && stat(sock, &st) < 0; i++)
		usleep(10000);
	assert_int_equal(stat(sock, &st), 0);

	/* The first connect starts readyd; the HELLO exchange is answered by it. */
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, sock), 0);
	exercise(c);
	char *status = NULL;
	assert_int_equal(rd_control(c, "{\"command\":\"status\"}", &status), 0);
	char want[32];
	snprintf(want, sizeof(want), "\"pid\":%d,", (int)pid); /* exec'd in place */
	assert_non_null(strstr(status, want));
	free(status);
	rd_close(c);
	assert_int_equal(stat(unused, &st), -1);

	kill(pid, SIGTERM);
	int ws;
	assert_int_equal(rdt_waitpid(pid, &ws, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);
	/* The socket belongs to whoever passed it: readyd does not unlink it. */
	assert_int_equal(stat(sock, &st), 0);
}

/* Read one datagram from the notify socket; returns its length or -ETIMEDOUT. */
static int notify_recv(int fd, char *buf, size_t cap)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, PATIENCE_MS) != 1)
		return -ETIMEDOUT;
	ssize_t n = recv(fd, buf, cap - 1, 0);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return (int)n;
}

/* Wait for a notify message containing 'want'; the others are skipped. */
static bool notify_expect(int fd, const char *want, char *buf, size_t cap)
{
	for (int i = 0; i < 200; i++) {
		if (notify_recv(fd, buf, cap) < 0)
			return false;
		if (strstr(buf, want))
			return true;
	}
	return false;
}

/* Our own NOTIFY_SOCKET: a datagram socket bound at path, as systemd's would be. */
static int notify_socket(const char *path)
{
	int n = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(n >= 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(n, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return n;
}

static void test_sd_notify(void **state)
{
	(void)state;
	char nsock[96], sock[96], buf[512];
	snprintf(nsock, sizeof(nsock), "%s/notify", dir_);
	snprintf(sock, sizeof(sock), "%s/readyd.sock", dir_);
	int n = notify_socket(nsock);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		char wpid[32];
		snprintf(wpid, sizeof(wpid), "%d", (int)getpid());
		setenv("NOTIFY_SOCKET", nsock, 1);
		setenv("WATCHDOG_USEC", "200000", 1);
		setenv("WATCHDOG_PID", wpid, 1);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(readyd_bin(), readyd_bin(), "--socket", sock, "--log-level", "warning", (char *)NULL);
		_exit(127);
	}
	assert_true(notify_expect(n, "READY=1", buf, sizeof(buf)));
	assert_non_null(strstr(buf, "STATUS=Serving 0 clients, 0 registrations"));
	/* Keep-alives come from the loop at half the watchdog interval. */
	assert_true(notify_expect(n, "WATCHDOG=1", buf, sizeof(buf)));
	assert_true(notify_expect(n, "WATCHDOG=1", buf, sizeof(buf)));

	/* STATUS follows the daemon's state. */
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, sock), 0);
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 5, RD_READABLE, 0), 0);
	assert_true(notify_expect(n, "STATUS=Serving 1 client, 1 registration,", buf, sizeof(buf)));
	rd_close(c);
	close(p[0]);
	close(p[1]);

	kill(pid, SIGTERM);
	assert_true(notify_expect(n, "STOPPING=1", buf, sizeof(buf)));
	int ws;
	assert_int_equal(rdt_waitpid(pid, &ws, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);
	close(n);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* SIGHUP reloads the config: RELOADING=1 (with MONOTONIC_USEC), then READY=1. A bad file
 * leaves the running configuration in force and the daemon up; a good one applies. */
static void test_reload(void **state)
{
	(void)state;
	char nsock[96], sock[96], cfg[96], buf[512];
	snprintf(nsock, sizeof(nsock), "%s/notify", dir_);
	snprintf(sock, sizeof(sock), "%s/readyd.sock", dir_);
	snprintf(cfg, sizeof(cfg), "%s/readyd.json", dir_);
	write_file(cfg, "{\"limits\": {\"registrations_per_client\": 2}}");
	int n = notify_socket(nsock);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		setenv("NOTIFY_SOCKET", nsock, 1);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(readyd_bin(), readyd_bin(), "--socket", sock, "--config", cfg, "--log-level",
		      "err", (char *)NULL);
		_exit(127);
	}
	assert_true(notify_expect(n, "READY=1", buf, sizeof(buf)));
	rd_client *c = NULL;
	assert_int_equal(rd_open(&c, sock), 0);
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 1, RD_READABLE, 0), 0);
	assert_int_equal(rd_add(c, p[0], 2, RD_READABLE, 0), 0);
	assert_int_equal(rd_add(c, p[0], 3, RD_READABLE, 0), -ENOSPC);

	/* A broken file: the old limit stays, and so does the daemon and its client. */
	write_file(cfg, "{\"limits\": {\"registrations_per_client\": 3,}}");
	kill(pid, SIGHUP);
	assert_true(notify_expect(n, "RELOADING=1", buf, sizeof(buf)));
	assert_non_null(strstr(buf, "MONOTONIC_USEC="));
	assert_true(notify_expect(n, "READY=1", buf, sizeof(buf)));
	assert_int_equal(rd_add(c, p[0], 3, RD_READABLE, 0), -ENOSPC);

	/* A good file applies to what comes next. */
	write_file(cfg, "{\"limits\": {\"registrations_per_client\": 3}}");
	kill(pid, SIGHUP);
	assert_true(notify_expect(n, "RELOADING=1", buf, sizeof(buf)));
	assert_true(notify_expect(n, "READY=1", buf, sizeof(buf)));
	assert_int_equal(rd_add(c, p[0], 3, RD_READABLE, 0), 0);
	assert_int_equal(rd_add(c, p[0], 4, RD_READABLE, 0), -ENOSPC);

	rd_close(c);
	close(p[0]);
	close(p[1]);
	kill(pid, SIGTERM);
	int ws;
	assert_int_equal(rdt_waitpid(pid, &ws, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);
	close(n);
}

/* Without NOTIFY_SOCKET nothing is sent and nothing ticks: the one timer an idle daemon
 * has (for handshake deadlines) is one-shot, never periodic. */
static void test_no_notify_socket_no_timer(void **state)
{
	(void)state;
	struct rdt_daemon d;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(rdt_daemon_start(&d, NULL), 0);
	char path[64], link[128], line[128];
	int timers = 0, armed = 0;
	for (int fd = 0; fd < 64; fd++) {
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)d.pid, fd);
		ssize_t l = readlink(path, link, sizeof(link) - 1);
		if (l < 0)
			continue;
		link[l] = '\0';
		if (!strstr(link, "timerfd"))
			continue;
		timers++;
		snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)d.pid, fd);
		FILE *f = fopen(path, "r");
		assert_non_null(f);
		while (fgets(line, sizeof(line), f))
			if (strncmp(line, "it_interval:", 12) == 0 && !strstr(line, "(0, 0)"))
				armed++;
		fclose(f);
	}
	assert_true(timers <= 1);
	assert_int_equal(armed, 0);
	assert_int_equal(rdt_daemon_stop(&d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_socket_activation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sd_notify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_notify_socket_no_timer, setup, teardown),
	};
	return cmocka_run_group_tests_name("systemd", tests, NULL, NULL);
}
