/* Integration-test harness (see harness.h). */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "../proto/rdp_io.h"
#include "../proto/rdp_path.h"

/* READYD_TEST_SKIP=PATTERN skips the tests whose names match (cmocka's glob), for runs
 * that cannot give a test what it needs: check-valgrind skips the one that fills the
 * daemon's fd table up to its RLIMIT_NOFILE, where valgrind keeps fds of its own. */
__attribute__((constructor)) static void skip_from_env(void)
{
	const char *skip = getenv("READYD_TEST_SKIP");
	if (skip && *skip)
		cmocka_set_skip_filter(skip);
}

static void nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int rdt_daemon_start(struct rdt_daemon *d, const char *config_json)
{
	const char *bin = getenv("READYD_BIN");
	if (!bin)
		bin = "build/bin/readyd";
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "/tmp/readyd-test-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/readyd.sock", d->dir);
	if (config_json) {
		snprintf(d->config, sizeof(d->config), "%s/readyd.json", d->dir);
		FILE *f = fopen(d->config, "w");
		if (!f)
			return -errno;
		fputs(config_json, f);
		fclose(f);
	}
	const char *level = getenv("READYD_TEST_LOG_LEVEL");
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char *argv[8];
		int i = 0;
		argv[i++] = (char *)bin;
		argv[i++] = "--socket";
		argv[i++] = d->sock;
		argv[i++] = "--log-level";
		argv[i++] = (char *)(level ? level : "warning");
		if (config_json) {
			argv[i++] = "--config";
			argv[i++] = d->config;
		}
		argv[i] = NULL;
		/* A daemon outlives no failed test. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		/* A test may run the daemon under a smaller fd limit, soft and hard. */
		const char *nofile = getenv("READYD_TEST_NOFILE");
		if (nofile) {
			struct rlimit rl = { .rlim_cur = strtoul(nofile, NULL, 10),
					     .rlim_max = strtoul(nofile, NULL, 10) };
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		/* The daemon starts with only stdio open, whatever the test holds. */
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execv(bin, argv);
		_exit(127);
	}
	d->pid = pid;
	for (int i = 0; i < 500; i++) {
		int fd = rdt_connect(d->sock);
		if (fd >= 0) {
			/* A full HELLO round trip: the daemon has accepted the probe, so the
			 * idle count below is not taken before the probe is even counted. */
			int r = rdt_hello(fd);
			close(fd);
			if (r < 0)
				return r;
			/* Let the daemon see the probe's hang-up before tests count fds. */
			if (rdt_wait_fds(pid, rdt_idle_fds(pid)) != rdt_idle_fds(pid))
				return -EBUSY;
			return 0;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			d->pid = 0;
			return -ECHILD;
		}
		nap_ms(10);
	}
	return -ETIMEDOUT;
}

pid_t rdt_waitpid(pid_t pid, int *st, int timeout_ms)
{
	int dummy;
	if (!st)
		st = &dummy;
	for (int waited = 0;; waited += 10) {
		pid_t r = waitpid(pid, st, WNOHANG);
		if (r != 0)
			return r;
		if (waited >= timeout_ms)
			break;
		nap_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, st, 0);
	return -ETIMEDOUT;
}

int rdt_daemon_stop(struct rdt_daemon *d)
{
	int st = -1;
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		if (rdt_waitpid(d->pid, &st, RDT_EXIT_MS) != d->pid)
			st = -1;
		d->pid = 0;
	}
	if (d->config[0])
		unlink(d->config);
	unlink(d->sock);
	rmdir(d->dir);
	if (st == -1)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int rdt_idle_fds(pid_t pid)
{
	char path[64], link[128];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -errno;
	int n = 1; /* the listening socket */
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
		if (strncmp(link, "socket:", 7) != 0)
			n++;
	}
	closedir(dir);
	return n;
}

int rdt_wait_fds(pid_t pid, int want)
{
	int n = rdt_count_fds(pid);
	for (int i = 0; i < 500 && n != want; i++) {
		nap_ms(10);
		n = rdt_count_fds(pid);
	}
	return n;
}

long rdt_rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int rdt_connect(const char *sock)
{
	struct sockaddr_un sa;
	int salen = rdp_sockaddr(&sa, sock);
	if (salen < 0)
		return salen;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, (socklen_t)salen) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

int rdt_send(int fd, const void *buf, size_t len, const int *fds, size_t nfds)
{
	return rdp_send(fd, buf, len, fds, nfds, false);
}

int rdt_recv(int fd, void *buf, size_t cap, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	struct rdp_rx rx;
	r = rdp_recv(fd, buf, cap, &rx, true);
	rdp_rx_close_fds(&rx);
	if (r <= 0)
		return r;
	return (int)rx.len;
}

int rdt_hello(int fd)
{
	uint8_t buf[RDP_MSG_MAX];
	size_t len = rdp_encode_hello(buf, sizeof(buf), 1, RDP_VERSION, 0);
	int r = rdt_send(fd, buf, len, NULL, 0);
	if (r < 0)
		return r;
	r = rdt_recv(fd, buf, sizeof(buf), 5000);
	if (r < 0)
		return r;
	struct rdp_hdr h;
	if (rdp_check_daemon_msg(buf, (size_t)r, 0, &h) != RDP_E_NONE || h.type != RDP_MSG_WELCOME)
		return -EPROTO;
	return 0;
}

int rdt_expect_error(int fd)
{
	uint8_t buf[RDP_MSG_MAX];
	int r = rdt_recv(fd, buf, sizeof(buf), 5000);
	if (r < 0)
		return r;
	struct rdp_hdr h;
	if (r == 0 || rdp_check_daemon_msg(buf, (size_t)r, 0, &h) != RDP_E_NONE ||
	    h.type != RDP_MSG_ERROR)
		return -EPROTO;
	uint32_t err, reason;
	const char *text;
	size_t tl;
	rdp_error_get(buf, (size_t)r, &err, &reason, &text, &tl);
	/* After the ERROR, the daemon closes the connection. */
	if (rdt_recv(fd, buf, sizeof(buf), 5000) != 0)
		return -EPROTO;
	return (int)reason;
}

void rdt_fds_snapshot(struct rdt_fds *s, pid_t daemon)
{
	s->self = rdt_count_fds(getpid());
	s->daemon = rdt_wait_fds(daemon, rdt_count_fds(daemon));
}

void rdt_fds_assert_back(const struct rdt_fds *s, pid_t daemon)
{
	assert_int_equal(rdt_count_fds(getpid()), s->self);
	assert_int_equal(rdt_wait_fds(daemon, s->daemon), s->daemon);
}

struct rdt_daemon rdt_suite;
static struct rdt_fds suite_fds;

int rdt_suite_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	return rdt_daemon_start(&rdt_suite, NULL) == 0 ? 0 : -1;
}

int rdt_suite_teardown(void **state)
{
	(void)state;
	return rdt_daemon_stop(&rdt_suite) == 0 ? 0 : -1;
}

int rdt_test_setup(void **state)
{
	(void)state;
	rdt_fds_snapshot(&suite_fds, rdt_suite.pid);
	return 0;
}

int rdt_test_teardown(void **state)
{
	(void)state;
	rdt_fds_assert_back(&suite_fds, rdt_suite.pid);
	return 0;
}
