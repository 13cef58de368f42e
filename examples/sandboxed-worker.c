/* sandboxed-worker: a TCP echo server whose worker may not call epoll, poll, select,
 * socket, connect or open, and still waits for its sockets: through readyd.
 *
 *   sandboxed-worker [--socket PATH] [--port PORT] [--check-sandbox] [--strict]
 *
 * The parent connects to readyd with socket(2) and connect(2) (no HELLO yet: see
 * rd_adopt(3)), listens on 127.0.0.1:PORT (0 picks a free port), and starts the worker:
 * this program again, run with only stdio, that connection and the listening socket
 * open, and their numbers in argv. The worker installs a seccomp filter (libseccomp)
 * under which epoll_*, poll, ppoll, select, pselect6, socket, connect, open, openat and
 * openat2 fail with EPERM, then adopts the connection and serves echo. Every wait is
 * rd_wait(..., -1) on the blocking connection, so libreadyd needs nothing the filter
 * denies (libreadyd(3), "System calls").
 *
 *   --check-sandbox  first prove the filter is in force: epoll_create1 and open fail
 *                    with EPERM
 *   --strict         an allow-list instead: only the calls libreadyd(3) lists for such a
 *                    worker, and the echo loop's own; any other call is reported by
 *                    number and ends the worker
 *
 * SIGTERM or SIGINT to the parent ends the worker too. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, close_range */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <seccomp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "readyd.h"

#define MAX_CONNS 256
#define LISTENER UINT64_MAX

/* Fail with EPERM: every way to wait for readiness, or to reach a new file or socket,
 * without readyd. */
static const char *const denied[] = {
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"poll", "ppoll", "select", "pselect6", "socket", "connect", "open", "openat", "openat2",
};

/* --strict allows only these. libreadyd, on an adopted blocking connection waited on
 * with a timeout of -1 or 0 (libreadyd(3), "System calls"): */
static const char *const allowed_libreadyd[] = {
	"sendmsg", "sendto", "recvfrom", "close", "fcntl",
	/* glibc's malloc */
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "getrandom",
};
/* ... and the echo loop's own: accept4, read, send, printf to stdout, exit. */
static const char *const allowed_worker[] = {
	"accept4", "read", "sendto", "write", "exit_group",
};

struct conn {
	int fd;
	char buf[16384]; /* bytes read but not yet echoed */
	size_t len;
};

static struct conn *conns[MAX_CONNS];
static pid_t worker_pid = -1;

/* ---- the worker ---- */

/* --strict: a call outside the allow-list traps here. Only async-signal-safe calls, and
 * only allowed ones: write and _exit. */
static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	static const char head[] = "sandboxed-worker: system call ";
	static const char tail[] = " is not in the allow-list\n";
	char num[16];
	size_t k = sizeof(num);
	unsigned v = (unsigned)si->si_syscall;

	(void)sig;
	(void)uc;
	do
		num[--k] = (char)('0' + v % 10);
	while ((v /= 10) && k > 0);
	(void)!write(STDERR_FILENO, head, sizeof(head) - 1);
	(void)!write(STDERR_FILENO, num + k, sizeof(num) - k);
	(void)!write(STDERR_FILENO, tail, sizeof(tail) - 1);
	_exit(3);
}

static int add_rules(scmp_filter_ctx f, uint32_t action, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		if (nr == __NR_SCMP_ERROR) {
			fprintf(stderr, "sandboxed-worker: libseccomp does not know %s\n", names[i]);
			return -EINVAL;
		}
		/* A call this architecture lacks (open on arm64) resolves to a pseudo-number,
		 * which libseccomp accepts and leaves out of the filter. */
		int r = seccomp_rule_add(f, action, nr, 0);
		if (r < 0) {
			fprintf(stderr, "sandboxed-worker: seccomp_rule_add %s: %s\n", names[i], strerror(-r));
			return r;
		}
	}
	return 0;
}

/* The deny-list (or, strict, the allow-list) for this process and its threads, with
 * no_new_privs set as seccomp requires of an unprivileged process. */
static int install_filter(bool strict)
{
	if (strict) {
		struct sigaction sa = { .sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO };
		if (sigaction(SIGSYS, &sa, NULL) < 0)
			return -errno;
	}
	scmp_filter_ctx f = seccomp_init(strict ? SCMP_ACT_TRAP : SCMP_ACT_ALLOW);
	if (!f)
		return -ENOMEM;
	int r = add_rules(f, SCMP_ACT_ERRNO(EPERM), denied, sizeof(denied) / sizeof(denied[0]));
	if (r == 0 && strict)
		r = add_rules(f, SCMP_ACT_ALLOW, allowed_libreadyd,
			      sizeof(allowed_libreadyd) / sizeof(allowed_libreadyd[0]));
	if (r == 0 && strict)
		r = add_rules(f, SCMP_ACT_ALLOW, allowed_worker,
			      sizeof(allowed_worker) / sizeof(allowed_worker[0]));
	if (r == 0)
		r = seccomp_load(f);
	seccomp_release(f);
	return r;
}

/* Inside the filter: the calls it denies fail with EPERM. */
static int check_sandbox(void)
{
	int fd = epoll_create1(0);
	if (fd >= 0 || errno != EPERM) {
		fprintf(stderr, "sandboxed-worker: epoll_create1 was not denied (%s)\n",
			fd >= 0 ? "it succeeded" : strerror(errno));
		return -EACCES;
	}
	fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
	if (fd >= 0 || errno != EPERM) {
		fprintf(stderr, "sandboxed-worker: open was not denied (%s)\n",
			fd >= 0 ? "it succeeded" : strerror(errno));
		return -EACCES;
	}
	printf("sandbox: epoll_create1 EPERM, open EPERM\n");
	return 0;
}

static void drop(rd_client *rd, uint64_t id)
{
	struct conn *c = conns[id];
	rd_delete(rd, id); /* the peer sees EOF only once readyd lets go of its copy too */
	close(c->fd);
	free(c);
	conns[id] = NULL;
}

/* Echo what can be echoed, in edge mode. Returns -1 when the connection is finished. */
static int pump(rd_client *rd, uint64_t id, uint32_t ready)
{
	struct conn *c = conns[id];
	for (;;) {
		while (c->len > 0) {
			ssize_t w = send(c->fd, c->buf, c->len, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno != EAGAIN)
					return -1;
				/* Wait for writable readiness, and stop reading meanwhile. */
				return rd_modify(rd, id, RD_WRITABLE, RD_EDGE) < 0 ? -1 : 0;
			}
			memmove(c->buf, c->buf + w, c->len - (size_t)w);
			c->len -= (size_t)w;
		}
		if (ready & RD_WRITABLE) {
			if (rd_modify(rd, id, RD_READABLE, RD_EDGE) < 0)
				return -1;
			ready = RD_READABLE;
		}
		ssize_t n = read(c->fd, c->buf, sizeof(c->buf));
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->len = (size_t)n;
	}
}

/* Accept until the backlog is empty (EAGAIN): the listener is edge-triggered. Returns
 * false when it stopped short (out of fds, say): connections still wait, and no new
 * edge comes for them, so the caller tries again once one of ours goes. */
static bool accept_all(rd_client *rd, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return errno == EAGAIN;
		uint64_t id = 0;
		while (id < MAX_CONNS && conns[id])
			id++;
		struct conn *c = id < MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		conns[id] = c;
		int r = rd_add(rd, fd, id, RD_READABLE, RD_EDGE);
		if (r < 0) {
			fprintf(stderr, "sandboxed-worker: rd_add: %s\n", strerror(-r));
			close(fd);
			free(c);
			conns[id] = NULL;
		}
	}
}

static bool is_socket(int fd)
{
	struct stat st;
	return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

static int worker(int cfd, int lfd, bool check, bool strict)
{
	static char outbuf[BUFSIZ];
	rd_client *rd;

	if (!is_socket(cfd) || !is_socket(lfd)) {
		fprintf(stderr, "sandboxed-worker: worker: fds %d and %d are not sockets\n", cfd, lfd);
		return 1;
	}
	/* Line-buffered, with our buffer: stdio then needs write(2) and nothing else. */
	setvbuf(stdout, outbuf, _IOLBF, sizeof(outbuf));
	signal(SIGPIPE, SIG_IGN);
	/* Blocking: then libreadyd waits in recvfrom, never in ppoll (libreadyd(3), NOTES). */
	int fl = fcntl(cfd, F_GETFL);
	if (fl < 0 || ((fl & O_NONBLOCK) && fcntl(cfd, F_SETFL, fl & ~O_NONBLOCK) < 0)) {
		perror("sandboxed-worker: fcntl");
		return 1;
	}

	int r = install_filter(strict);
	if (r < 0) {
		fprintf(stderr, "sandboxed-worker: cannot install the seccomp filter: %s\n", strerror(-r));
		return 1;
	}
	if (check && check_sandbox() < 0)
		return 1;

	/* From here on, everything runs under the filter. */
	r = rd_adopt(&rd, cfd);
	if (r < 0) {
		fprintf(stderr, "sandboxed-worker: rd_adopt: %s\n", strerror(-r));
		return 1;
	}
	r = rd_add(rd, lfd, LISTENER, RD_READABLE, RD_EDGE);
	if (r < 0) {
		fprintf(stderr, "sandboxed-worker: rd_add: %s\n", strerror(-r));
		return 1;
	}
	printf("sandboxed-worker: worker serving through readyd%s\n", strict ? " (strict)" : "");

	bool waiting = false; /* connections left in the backlog by accept_all */
	for (;;) {
		struct rd_event ev[64];
		int n = rd_wait(rd, ev, 64, -1);
		if (n < 0) {
			fprintf(stderr, "sandboxed-worker: rd_wait: %s\n", strerror(-n));
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (ev[i].token == LISTENER) {
				waiting = !accept_all(rd, lfd);
			} else if (ev[i].token < MAX_CONNS && conns[ev[i].token] &&
				   pump(rd, ev[i].token, ev[i].ready) < 0) {
				drop(rd, ev[i].token);
				if (waiting) /* a connection went: room for those left waiting */
					waiting = !accept_all(rd, lfd);
			}
		}
	}
}

/* ---- the parent ---- */

/* A socket connected to readyd, on which nothing has been said: rd_adopt says HELLO. */
static int connect_readyd(const char *path)
{
	char def[108];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (!path) {
		int r = rd_default_socket_path(def, sizeof(def));
		if (r < 0)
			return r;
		path = def;
	}
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int listen_loopback(int port, int *bound)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	*bound = ntohs(sa.sin_port);
	return fd;
}

static void forward(int sig)
{
	if (worker_pid > 0)
		kill(worker_pid, sig);
}

/* In the child: the connection and the listener become fds 3 and 4, inheritable, and
 * every other fd above stdio is closed; then run this program again as the worker. */
static void exec_worker(int cfd, int lfd, pid_t parent, bool check, bool strict)
{
	char self[] = "/proc/self/exe";
	char *argv[] = { "sandboxed-worker", "--connection-fd", "3", "--listen-fd", "4", NULL, NULL, NULL };
	int k = 5;

	/* Dying with the parent, should it be killed outright. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		_exit(1);
	/* Out of the way of 3 and 4 first, then dup2, which clears close-on-exec. */
	cfd = fcntl(cfd, F_DUPFD_CLOEXEC, 10);
	lfd = fcntl(lfd, F_DUPFD_CLOEXEC, 10);
	if (cfd < 0 || lfd < 0 || dup2(cfd, 3) < 0 || dup2(lfd, 4) < 0 ||
	    close_range(5, ~0u, 0) < 0) {
		perror("sandboxed-worker: preparing the worker's fds");
		_exit(1);
	}
	if (check)
		argv[k++] = "--check-sandbox";
	if (strict)
		argv[k++] = "--strict";
	execv(self, argv);
	perror("sandboxed-worker: exec");
	_exit(127);
}

static int parent(const char *path, int port, bool check, bool strict)
{
	int cfd = connect_readyd(path);
	if (cfd < 0) {
		fprintf(stderr, "sandboxed-worker: cannot reach readyd: %s\n", strerror(-cfd));
		return 1;
	}
	int bound = 0;
	int lfd = listen_loopback(port, &bound);
	if (lfd < 0) {
		fprintf(stderr, "sandboxed-worker: listen: %s\n", strerror(-lfd));
		close(cfd);
		return 1;
	}
	fflush(stdout);
	pid_t self = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		perror("sandboxed-worker: fork");
		return 1;
	}
	if (pid == 0)
		exec_worker(cfd, lfd, self, check, strict);
	worker_pid = pid;
	close(cfd);
	close(lfd);

	struct sigaction sa = { .sa_handler = forward, .sa_flags = SA_RESTART };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	printf("sandboxed-worker: listening on 127.0.0.1:%d, worker pid %d\n", bound, (int)pid);
	fflush(stdout);

	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			perror("sandboxed-worker: waitpid");
			return 1;
		}
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);
		if (sig == SIGTERM || sig == SIGINT)
			return 0;
		fprintf(stderr, "sandboxed-worker: worker killed by signal %d (%s)\n", sig, strsignal(sig));
		return 1;
	}
	return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
	enum { OPT_CONNECTION_FD = 256, OPT_LISTEN_FD };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "port", required_argument, NULL, 'p' },
		{ "check-sandbox", no_argument, NULL, 'c' },
		{ "strict", no_argument, NULL, 'S' },
		/* The worker's, set by the parent. */
		{ "connection-fd", required_argument, NULL, OPT_CONNECTION_FD },
		{ "listen-fd", required_argument, NULL, OPT_LISTEN_FD },
		{ 0 },
	};
	const char *path = NULL;
	int port = 7777, cfd = -1, lfd = -1, o;
	bool check = false, strict = false;

	while ((o = getopt_long(argc, argv, "s:p:", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			path = optarg;
			break;
		case 'p':
			port = atoi(optarg);
			break;
		case 'c':
			check = true;
			break;
		case 'S':
			strict = true;
			break;
		case OPT_CONNECTION_FD:
			cfd = atoi(optarg);
			break;
		case OPT_LISTEN_FD:
			lfd = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: sandboxed-worker [--socket PATH] [--port PORT] "
					"[--check-sandbox] [--strict]\n");
			return 2;
		}
	}
	if (cfd >= 0 || lfd >= 0)
		return worker(cfd, lfd, check, strict);
	return parent(path, port, check, strict);
}
