/* Process control for the benchmark: the readyd it starts, the children it forks, and
 * the clocks and /proc readings it takes of them. Every process started here is
 * recorded and stopped by its pid; every wait is bounded. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define CHILDREN_MAX 1024
#define ARGV_MAX 64

bool bench_verbose;

static pid_t children[CHILDREN_MAX];
static int nchildren;
/* The daemon running now, for cleanup after a signal. */
static struct bench_daemon *live_daemon;

static void remember(pid_t pid)
{
	for (int i = 0; i < nchildren; i++)
		if (children[i] == 0) {
			children[i] = pid;
			return;
		}
	if (nchildren < CHILDREN_MAX)
		children[nchildren++] = pid;
}

static void forget(pid_t pid)
{
	for (int i = 0; i < nchildren; i++)
		if (children[i] == pid)
			children[i] = 0;
	while (nchildren > 0 && children[nchildren - 1] == 0)
		nchildren--;
}

uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Close every fd above stderr: a child that execs starts with stdio only. */
static void close_from_3(void)
{
	if (close_range(3, ~0u, 0) == 0)
		return;
	long max = sysconf(_SC_OPEN_MAX);
	for (long fd = 3; fd < max; fd++)
		close((int)fd);
}

/* Split 'line' (modified) on spaces into argv, replacing "{pid}" in a word by pid. */
static int split_words(char *line, char **argv, int max, pid_t pid, char *pidbuf, size_t pidlen)
{
	int n = 0;
	for (char *save = NULL, *w = strtok_r(line, " ", &save); w && n < max - 1;
	     w = strtok_r(NULL, " ", &save)) {
		char *at = strstr(w, "{pid}");
		if (at && pid > 0) {
			snprintf(pidbuf, pidlen, "%.*s%d%s", (int)(at - w), w, (int)pid, at + 5);
			w = pidbuf;
		}
		argv[n++] = w;
	}
	argv[n] = NULL;
	return n;
}

static int try_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int bench_daemon_start(struct bench_daemon *d, const char *bin, const char *wrap)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "/tmp/readyd-bench-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/readyd.sock", d->dir);

	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char line[1024], *argv[ARGV_MAX], pidbuf[64];
		int n = 0;
		if (wrap) {
			snprintf(line, sizeof(line), "%s", wrap);
			n = split_words(line, argv, ARGV_MAX - 6, 0, pidbuf, sizeof(pidbuf));
		}
		argv[n++] = (char *)bin;
		argv[n++] = "--socket";
		argv[n++] = d->sock;
		argv[n++] = "--log-level";
		argv[n++] = "warning";
		argv[n] = NULL;
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		close_from_3();
		execvp(argv[0], argv);
		_exit(127);
	}
	d->pid = pid;
	remember(pid);
	live_daemon = d;
	/* valgrind takes seconds to start: allow 30 s, in 10 ms steps. */
	for (int i = 0; i < 3000; i++) {
		if (try_connect(d->sock) == 0) {
			bench_sleep_ms(20); /* let the daemon see the probe hang up */
			return 0;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			forget(pid);
			d->pid = 0;
			return -ECHILD;
		}
		bench_sleep_ms(10);
	}
	bench_daemon_stop(d);
	return -ETIMEDOUT;
}

void bench_daemon_stop(struct bench_daemon *d)
{
	if (live_daemon == d)
		live_daemon = NULL;
	if (d->pid > 0)
		bench_stop_pid(d->pid, SIGTERM);
	d->pid = 0;
	if (d->sock[0])
		unlink(d->sock);
	if (d->dir[0])
		rmdir(d->dir);
	d->sock[0] = d->dir[0] = '\0';
}

/* A forked child asked to stop with SIGTERM exits normally, so that a profiler following
 * it (valgrind --trace-children, callgrind) writes what it counted. */
static void child_term(int sig)
{
	(void)sig;
	_exit(0);
}

pid_t bench_fork(int (*fn)(void *), void *arg)
{
	pid_t ppid = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != ppid)
			_exit(1);
		nchildren = 0; /* the parent's children are not ours to stop */
		signal(SIGPIPE, SIG_IGN);
		signal(SIGTERM, child_term);
		alarm(BENCH_CHILD_MAX_S); /* every child's life is bounded, whatever happens */
		_exit(fn(arg) & 0xff);
	}
	remember(pid);
	return pid;
}

static int watchdog(void *arg)
{
	int seconds = *(const int *)arg;
	alarm(0);
	for (int i = 0; i < seconds * 10 && getppid() != 1; i++)
		bench_sleep_ms(100);
	static const char msg[] = "readyd-bench: watchdog: run took too long; stopping it\n";
	if (write(2, msg, sizeof(msg) - 1) < 0)
		return 1;
	kill(getppid(), SIGTERM);
	return 1;
}

pid_t bench_watchdog(int seconds)
{
	return bench_fork(watchdog, &seconds);
}

int bench_stop_pid(pid_t pid, int sig)
{
	int st = -1;
	if (pid <= 0)
		return -1;
	kill(pid, sig ? sig : SIGKILL);
	/* Bounded: 20 s (valgrind writes its profile on SIGTERM), then SIGKILL. */
	for (int i = 0; i < 20000; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid || (r < 0 && errno == ECHILD))
			goto done;
		bench_sleep_ms(1);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
done:
	forget(pid);
	return st;
}

void bench_stop_all(void)
{
	for (int i = 0; i < nchildren; i++)
		if (children[i] > 0)
			kill(children[i], SIGKILL);
	for (int i = 0; i < nchildren; i++)
		if (children[i] > 0)
			waitpid(children[i], NULL, 0);
	nchildren = 0;
	if (live_daemon) {
		unlink(live_daemon->sock);
		rmdir(live_daemon->dir);
		live_daemon = NULL;
	}
}

pid_t bench_spawn_cmd(const char *cmdline, pid_t target)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char line[1024], *argv[ARGV_MAX], pidbuf[64];
		snprintf(line, sizeof(line), "%s", cmdline);
		split_words(line, argv, ARGV_MAX, target, pidbuf, sizeof(pidbuf));
		prctl(PR_SET_PDEATHSIG, SIGINT);
		close_from_3();
		execvp(argv[0], argv);
		_exit(127);
	}
	remember(pid);
	return pid;
}

int bench_wait_byte(int fd, int timeout_ms)
{
	uint64_t deadline = bench_now_ns() + (uint64_t)timeout_ms * 1000000u;
	for (;;) {
		uint64_t now = bench_now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		unsigned char b;
		ssize_t n = read(fd, &b, 1);
		if (n == 1)
			return b;
		if (n == 0)
			return -EPIPE;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
	}
}

void bench_say(int fd, int status)
{
	unsigned char b = (unsigned char)status;
	while (write(fd, &b, 1) < 0 && errno == EINTR)
		;
}

void bench_drain(int fd)
{
	char buf[4096];
	for (int i = 0; i < 1024; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
			return;
		if (read(fd, buf, sizeof(buf)) <= 0)
			return;
	}
}

long bench_rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int64_t bench_cpu_ns(pid_t pid)
{
	clockid_t clk;
	struct timespec ts;
	int r = clock_getcpuclockid(pid, &clk);
	if (r != 0)
		return -r;
	if (clock_gettime(clk, &ts) < 0)
		return -errno;
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

long bench_ctxt_switches(pid_t pid)
{
	char path[64], line[256];
	long n = -ENOENT;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

int bench_count_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -errno;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return pid == getpid() ? n - 1 : n;
}

int bench_wait_fds(pid_t pid, int want, int timeout_ms)
{
	uint64_t deadline = bench_now_ns() + (uint64_t)timeout_ms * 1000000u;
	int n = bench_count_fds(pid);
	while (n > want && bench_now_ns() < deadline) {
		bench_sleep_ms(2);
		n = bench_count_fds(pid);
	}
	return n;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double bench_quantile(double *v, int n, double q)
{
	if (n <= 0)
		return 0.0 / 0.0;
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	/* Nearest rank. */
	double rank = q * n;
	int i = (int)rank;
	if ((double)i < rank)
		i++;
	if (i < 1)
		i = 1;
	if (i > n)
		i = n;
	return v[i - 1];
}

double bench_median(double *v, int n)
{
	if (n <= 0)
		return 0.0 / 0.0;
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
