/* prefork-server: N prefork workers share one listening socket through a readyd group,
 * so every incoming connection wakes exactly one of them.
 *
 *   prefork-server [--socket PATH] [--port PORT] [--workers N] [--stats]
 *
 * The parent listens on 127.0.0.1:PORT (default 7778; 0 picks a free port) and forks N
 * workers (default 4). Each worker opens its own readyd connection, registers the
 * listening socket RD_READABLE | RD_ONESHOT and joins the group "web". Then it loops:
 * wait for the listener, accept one connection, re-arm at once (so the next connection
 * can go to the next worker while this one serves), answer "hello from worker K" and
 * close. An accept that finds nothing (EAGAIN) is a spurious wakeup: with the group
 * there should be none. The parent prints the port once every worker has joined, and
 * on SIGTERM or SIGINT stops the workers by pid and exits 0; with --stats it first
 * prints what each worker reported through a pipe: wakeups, connections, spurious
 * wakeups. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "readyd.h"

#define WORKERS_MAX 64
#define GROUP "web"
#define LISTENER_TOKEN 1
#define STOP_PATIENCE_MS 5000 /* SIGTERM to SIGKILL for a worker that does not go */

/* What a worker tells the parent after joining (all zero) and after every wakeup: its
 * running totals, one write of 16 bytes, which a pipe delivers whole. */
struct report {
	uint32_t worker; /* 1..N */
	uint32_t wakeups;
	uint32_t accepted;
	uint32_t spurious;
};

struct worker {
	pid_t pid;       /* 0 once reaped */
	bool joined;     /* its first report arrived */
	struct report last;
};

static void nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* One report to the parent, in one write: 0 or -errno. */
static int tell(int fd, const struct report *r)
{
	ssize_t n = write(fd, r, sizeof(*r));
	return n == (ssize_t)sizeof(*r) ? 0 : n < 0 ? -errno : -EIO;
}

/* A worker's life: its own readyd connection, one registration of the shared listener in
 * the group, and a loop of wait, accept one, re-arm, serve. Returns the exit status. */
static int worker_run(uint32_t k, const char *path, int lfd, int report_fd)
{
	struct report rep = { .worker = k };
	rd_client *rd;
	int r = rd_open(&rd, path);
	if (r < 0) {
		fprintf(stderr, "prefork-server: worker %u: cannot reach readyd: %s\n", k, strerror(-r));
		return 1;
	}
	r = rd_add(rd, lfd, LISTENER_TOKEN, RD_READABLE, RD_ONESHOT);
	if (r == 0)
		r = rd_join(rd, LISTENER_TOKEN, GROUP);
	if (r < 0) {
		fprintf(stderr, "prefork-server: worker %u: registering the listener: %s\n", k,
			strerror(-r));
		rd_close(rd);
		return 1;
	}
	if (tell(report_fd, &rep) < 0)
		return 1;

	char hello[64];
	int hlen = snprintf(hello, sizeof(hello), "hello from worker %u\n", k);
	for (;;) {
		struct rd_event ev;
		r = rd_wait(rd, &ev, 1, -1);
		if (r < 0) {
			fprintf(stderr, "prefork-server: worker %u: rd_wait: %s\n", k, strerror(-r));
			return 1;
		}
		if (r == 0)
			continue;
		rep.wakeups++;
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		int err = cfd < 0 ? errno : 0;
		if (cfd >= 0)
			rep.accepted++;
		else if (err == EAGAIN)
			rep.spurious++; /* someone else took it: the herd a group prevents */
		else if (err != ECONNABORTED && err != EINTR)
			fprintf(stderr, "prefork-server: worker %u: accept: %s\n", k, strerror(err));
		/* Running totals first, so they are in the pipe before the client hears from us. */
		if (tell(report_fd, &rep) < 0)
			return 1;
		if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
			nap_ms(100); /* the connection stays queued: do not spin on it */
		/* Re-arm before serving: the group can hand the next connection to another
		 * worker (or to this one) while this one is busy. */
		r = rd_rearm(rd, LISTENER_TOKEN);
		if (r < 0) {
			fprintf(stderr, "prefork-server: worker %u: rd_rearm: %s\n", k, strerror(-r));
			return 1;
		}
		if (cfd >= 0) {
			if (send(cfd, hello, (size_t)hlen, MSG_NOSIGNAL) < 0 && errno != EPIPE &&
			    errno != ECONNRESET)
				fprintf(stderr, "prefork-server: worker %u: send: %s\n", k, strerror(errno));
			close(cfd);
		}
	}
}

static pid_t worker_start(uint32_t k, const char *path, int lfd, int report_fd, int read_end,
			  const sigset_t *old_mask)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid < 0 ? -errno : pid;
	/* A worker dies with the parent, and starts with the signals as they were. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(1);
	close(read_end);
	sigprocmask(SIG_SETMASK, old_mask, NULL);
	_exit(worker_run(k, path, lfd, report_fd));
}

/* Read what the workers reported. Returns false at end of file (every worker gone). */
static bool read_reports(int fd, struct worker *w, uint32_t n)
{
	static unsigned char buf[sizeof(struct report) * 64];
	static size_t have;
	ssize_t got = read(fd, buf + have, sizeof(buf) - have);
	if (got <= 0)
		return got < 0 && (errno == EINTR || errno == EAGAIN);
	have += (size_t)got;
	size_t off = 0;
	for (; have - off >= sizeof(struct report); off += sizeof(struct report)) {
		struct report r;
		memcpy(&r, buf + off, sizeof(r));
		if (r.worker >= 1 && r.worker <= n) {
			w[r.worker - 1].joined = true;
			w[r.worker - 1].last = r;
		}
	}
	memmove(buf, buf + off, have - off);
	have -= off;
	return true;
}

/* Reap workers that ended. Returns how many ended on their own. */
static int reap(struct worker *w, uint32_t n)
{
	int ended = 0;
	for (uint32_t i = 0; i < n; i++) {
		int st;
		if (w[i].pid > 0 && waitpid(w[i].pid, &st, WNOHANG) == w[i].pid) {
			fprintf(stderr, "prefork-server: worker %u (pid %d) %s %d\n", i + 1, (int)w[i].pid,
				WIFEXITED(st) ? "exited with status" : "was killed by signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			w[i].pid = 0;
			ended++;
		}
	}
	return ended;
}

/* SIGTERM every worker still there, by pid; SIGKILL those that outstay the patience. */
static void stop_workers(struct worker *w, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (w[i].pid > 0)
			kill(w[i].pid, SIGTERM);
	for (int t = 0; t <= STOP_PATIENCE_MS / 10; t++) {
		bool left = false;
		for (uint32_t i = 0; i < n; i++) {
			if (w[i].pid > 0 && waitpid(w[i].pid, NULL, WNOHANG) == w[i].pid)
				w[i].pid = 0;
			left |= w[i].pid > 0;
		}
		if (!left)
			return;
		nap_ms(10);
	}
	for (uint32_t i = 0; i < n; i++)
		if (w[i].pid > 0) {
			kill(w[i].pid, SIGKILL);
			waitpid(w[i].pid, NULL, 0);
			w[i].pid = 0;
		}
}

static void print_stats(const struct worker *w, const pid_t *pids, uint32_t n)
{
	unsigned long wake = 0, acc = 0, spur = 0;
	for (uint32_t i = 0; i < n; i++) {
		printf("prefork-server: worker %u (pid %d): connections %u, wakeups %u, spurious %u\n",
		       i + 1, (int)pids[i], w[i].last.accepted, w[i].last.wakeups, w[i].last.spurious);
		wake += w[i].last.wakeups;
		acc += w[i].last.accepted;
		spur += w[i].last.spurious;
	}
	printf("prefork-server: total: connections %lu, wakeups %lu, spurious %lu\n", acc, wake, spur);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: prefork-server [--socket PATH] [--port PORT] [--workers N] [--stats]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "port", required_argument, NULL, 'p' },
		{ "workers", required_argument, NULL, 'w' },
		{ "stats", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *path = NULL;
	long port = 7778, nw = 4;
	bool stats = false;
	int o;
	while ((o = getopt_long(argc, argv, "s:p:w:h", opts, NULL)) != -1) {
		char *end = NULL;
		switch (o) {
		case 's':
			path = optarg;
			break;
		case 'p':
			port = strtol(optarg, &end, 10);
			if (*end || port < 0 || port > 65535) {
				fprintf(stderr, "prefork-server: --port: 0 to 65535\n");
				return 2;
			}
			break;
		case 'w':
			nw = strtol(optarg, &end, 10);
			if (*end || nw < 1 || nw > WORKERS_MAX) {
				fprintf(stderr, "prefork-server: --workers: 1 to %d\n", WORKERS_MAX);
				return 2;
			}
			break;
		case 'S':
			stats = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	uint32_t n = (uint32_t)nw;

	/* The listener: non-blocking, so an accept that loses the race says EAGAIN. */
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;
	socklen_t sl = sizeof(sa);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		perror("prefork-server: listen");
		return 1;
	}

	/* Signals arrive through a signalfd, blocked from before the first fork so none is
	 * missed; the workers restore the mask they inherit. */
	sigset_t mask, old_mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, &old_mask);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	int pfd[2];
	if (sfd < 0 || pipe2(pfd, O_CLOEXEC) < 0) {
		perror("prefork-server: signalfd, pipe");
		return 1;
	}

	struct worker w[WORKERS_MAX] = { 0 };
	pid_t pids[WORKERS_MAX] = { 0 };
	int status = 0;
	for (uint32_t i = 0; i < n; i++) {
		w[i].pid = pids[i] = worker_start(i + 1, path, lfd, pfd[1], pfd[0], &old_mask);
		if (w[i].pid < 0) {
			fprintf(stderr, "prefork-server: fork: %s\n", strerror(-w[i].pid));
			w[i].pid = 0;
			status = 1;
			break;
		}
	}
	/* The workers own the listener and the pipe's write end now. */
	close(lfd);
	close(pfd[1]);

	bool announced = false;
	while (status == 0) {
		if (!announced) {
			uint32_t joined = 0;
			for (uint32_t i = 0; i < n; i++)
				joined += w[i].joined;
			if (joined == n) {
				printf("prefork-server: listening on 127.0.0.1:%d with %u workers\n",
				       ntohs(sa.sin_port), n);
				fflush(stdout);
				announced = true;
			}
		}
		struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = pfd[0], .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("prefork-server: poll");
			status = 1;
			break;
		}
		if (p[1].revents && !read_reports(pfd[0], w, n)) {
			fprintf(stderr, "prefork-server: every worker is gone\n");
			status = 1;
			break;
		}
		if (p[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
				continue;
			if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
				break;
			if (si.ssi_signo == SIGCHLD && reap(w, n) > 0)
				status = 1; /* a worker died on its own: stop the rest */
		}
	}
	stop_workers(w, n);
	/* Every writer is gone: the pipe holds the last reports, then end of file. */
	while (read_reports(pfd[0], w, n))
		;
	if (stats)
		print_stats(w, pids, n);
	return status;
}
