/* accept_wakeups_per_connection, accept_throughput: 4 prefork workers share one listening
 * TCP socket on loopback, and a client process connects to it. Three ways for the
 * workers to wait, each worker accepting one connection per wakeup:
 *   readyd     each worker registers the listener RD_ONESHOT and joins one group; after
 *              a wakeup it accepts, re-arms at once, then closes the connection
 *   herd       each worker has its own epoll on the listener, level-triggered
 *   exclusive  the same with EPOLLEXCLUSIVE
 * A wakeup is a worker woken in its wait for readiness: a sleep there that ended. epoll
 * re-checks the listener before epoll_wait returns, so most of a herd goes back to sleep
 * inside the kernel and is never seen by the worker; the count is therefore taken from
 * the workers' voluntary context switches (epoll_wait is the only call of theirs that
 * sleeps), less, for readyd, the sleeps inside rd_rearm waiting for the daemon's reply,
 * which the worker counts itself. Returns of the wait with an event are counted too; one
 * whose accept finds nothing (EAGAIN) is spurious. Workers close connections with a reset
 * (SO_LINGER 0), so no run leaves TIME_WAIT sockets behind; the client counts a
 * connection done when it sees that reset. The wakeups scenario makes connections one at
 * a time; the throughput scenario keeps ACC_INFLIGHT connecting at once. Every phase has
 * fresh processes, and its client is bounded in count and in time. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#include "readyd.h"

#define ACC_WORKERS 4
#define ACC_INFLIGHT 32     /* throughput: connections the client has open at once */
#define ACC_BACKLOG 1024
#define ACC_TIMEOUT_MS 20000 /* one phase's client, at most */
#define ACC_SETTLE_MS 10     /* after the last connection: late wakeups are counted */
#define ACC_ASLEEP_MS 5      /* before the first: every worker is asleep in its wait */

enum acc_mode { ACC_READYD, ACC_HERD, ACC_EXCLUSIVE, ACC_MODES };
static const char *const mode_name[ACC_MODES] = { "readyd", "herd", "exclusive" };

/* One worker's counters, on a cache line of its own. */
struct acc_counts {
	_Atomic uint64_t returns;      /* the wait returned an event */
	_Atomic uint64_t accepted;
	_Atomic uint64_t spurious;
	_Atomic uint64_t rearm_sleeps; /* readyd: sleeps inside rd_rearm */
	char pad[32];
};

struct acc_shared {
	struct acc_counts w[ACC_WORKERS];
	uint64_t done; /* connections the client saw answered */
	uint64_t ns;   /* from its first connect to the last answer */
};

struct acc {
	struct acc_shared *sh; /* shared with every child */
	const char *sock;      /* readyd's socket */
	int lfd;               /* the listener, non-blocking; children inherit it */
	struct sockaddr_in addr;
	int ready_w;           /* a worker says 0 here once it waits */
	int done_w;            /* the client says 0 (or an error) here when it is done */
	int idx;               /* in a worker: which one */
	enum acc_mode mode;
	char group[32];
	long conns;            /* the client: connections to make */
	int inflight;          /* ... at once */
};

/* A reset, not a FIN: no TIME_WAIT is left behind by a hundred thousand connections. */
static void close_reset(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

static int accept_one(struct acc *a, struct acc_counts *k)
{
	int fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		atomic_fetch_add_explicit(&k->accepted, 1, memory_order_relaxed);
	else if (errno == EAGAIN)
		atomic_fetch_add_explicit(&k->spurious, 1, memory_order_relaxed);
	return fd;
}

static int worker_readyd(void *arg)
{
	struct acc *a = arg;
	struct acc_counts *k = &a->sh->w[a->idx];
	rd_client *c;
	if (rd_open(&c, a->sock) < 0 || rd_add(c, a->lfd, 1, RD_READABLE, RD_ONESHOT) < 0 ||
	    rd_join(c, 1, a->group) < 0) {
		bench_say(a->ready_w, 1);
		return 1;
	}
	bench_say(a->ready_w, 0);
	for (;;) {
		struct rd_event ev;
		int n = rd_wait(c, &ev, 1, -1);
		if (n < 0)
			return 2;
		if (n == 0)
			continue;
		atomic_fetch_add_explicit(&k->returns, 1, memory_order_relaxed);
		int fd = accept_one(a, k);
		struct rusage u0, u1;
		getrusage(RUSAGE_THREAD, &u0);
		if (rd_rearm(c, 1) < 0)
			return 3;
		getrusage(RUSAGE_THREAD, &u1);
		atomic_fetch_add_explicit(&k->rearm_sleeps, (uint64_t)(u1.ru_nvcsw - u0.ru_nvcsw),
					  memory_order_relaxed);
		if (fd >= 0)
			close_reset(fd);
	}
}

static int worker_epoll(void *arg)
{
	struct acc *a = arg;
	struct acc_counts *k = &a->sh->w[a->idx];
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN | (a->mode == ACC_EXCLUSIVE ? EPOLLEXCLUSIVE : 0) };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, a->lfd, &ev) < 0) {
		bench_say(a->ready_w, 1);
		return 1;
	}
	bench_say(a->ready_w, 0);
	for (;;) {
		int n = epoll_wait(ep, &ev, 1, -1);
		if (n < 0 && errno != EINTR)
			return 2;
		if (n <= 0)
			continue;
		atomic_fetch_add_explicit(&k->returns, 1, memory_order_relaxed);
		int fd = accept_one(a, k);
		if (fd >= 0)
			close_reset(fd);
	}
}

/* Start one connection, watched for its answer (the worker's reset). */
static int dial(struct acc *a, int ep)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&a->addr, sizeof(a->addr)) < 0 && errno != EINPROGRESS) {
		int r = -errno;
		close(s);
		return r;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = s };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) {
		int r = -errno;
		close(s);
		return r;
	}
	return 0;
}

/* The client: 'conns' connections, 'inflight' at once, bounded by ACC_TIMEOUT_MS. */
static int client_run(void *arg)
{
	struct acc *a = arg;
	struct epoll_event ev[64];
	long started = 0, done = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC), r = 0;
	if (ep < 0) {
		bench_say(a->done_w, 1);
		return 1;
	}
	uint64_t t0 = bench_now_ns(), deadline = t0 + (uint64_t)ACC_TIMEOUT_MS * 1000000u;
	for (; started < a->conns && started < a->inflight && r == 0; started++)
		r = dial(a, ep);
	while (r == 0 && done < a->conns) {
		if (bench_now_ns() > deadline) {
			r = -ETIMEDOUT;
			break;
		}
		int n = epoll_wait(ep, ev, 64, 100);
		for (int i = 0; i < n && r == 0; i++) {
			close(ev[i].data.fd);
			done++;
			if (started < a->conns) {
				r = dial(a, ep);
				started++;
			}
		}
	}
	a->sh->ns = bench_now_ns() - t0;
	a->sh->done = (uint64_t)done;
	if (r < 0)
		fprintf(stderr, "readyd-bench: accept client: %s after %ld of %ld connections\n",
			strerror(-r), done, a->conns);
	bench_say(a->done_w, r < 0 ? 2 : 0);
	return r < 0 ? 2 : 0;
}

struct acc_totals {
	uint64_t conns, ns, returns, spurious, sleeps, rearm_sleeps, daemon_cpu_ns, daemon_sleeps;
};

static uint64_t worker_ctxt(const pid_t *pids)
{
	uint64_t n = 0;
	for (int i = 0; i < ACC_WORKERS; i++) {
		long v = bench_ctxt_switches(pids[i]);
		n += v > 0 ? (uint64_t)v : 0;
	}
	return n;
}

/* One phase: fresh workers in 'mode', a client making 'conns' connections 'inflight' at
 * a time, then everything stopped. Adds to *t; returns 0 or -errno. */
static int acc_phase(struct acc *a, enum acc_mode mode, long conns, int inflight,
		     struct bench_daemon *d, int daemon_fds, struct acc_totals *t)
{
	static unsigned phase;
	pid_t pids[ACC_WORKERS + 1];
	int npids = 0, rp[2], dp[2], r = 0;

	if (pipe(rp) < 0)
		return -errno;
	if (pipe(dp) < 0) {
		r = -errno;
		close(rp[0]);
		close(rp[1]);
		return r;
	}
	memset(a->sh, 0, sizeof(*a->sh));
	a->mode = mode;
	a->ready_w = rp[1];
	a->done_w = dp[1];
	a->conns = conns;
	a->inflight = inflight;
	/* A group of its own per phase: the last phase's may not be gone yet. */
	snprintf(a->group, sizeof(a->group), "accept-bench-%u", ++phase);
	for (int i = 0; i < ACC_WORKERS; i++) {
		a->idx = i;
		pids[npids++] = bench_fork(mode == ACC_READYD ? worker_readyd : worker_epoll, a);
	}
	for (int i = 0; i < npids; i++) {
		int b = pids[i] < 0 ? pids[i] : bench_wait_byte(rp[0], 10000);
		if (b != 0) {
			fprintf(stderr, "readyd-bench: accept %s: a worker did not start (%d)\n",
				mode_name[mode], b);
			r = b < 0 ? b : -EIO;
			goto out;
		}
	}
	bench_sleep_ms(ACC_ASLEEP_MS);
	uint64_t x0 = worker_ctxt(pids);
	int64_t c0 = mode == ACC_READYD ? bench_cpu_ns(d->pid) : 0;
	long dz0 = mode == ACC_READYD ? bench_ctxt_switches(d->pid) : 0;
	pids[npids++] = bench_fork(client_run, a);
	int b = pids[npids - 1] < 0 ? pids[npids - 1] : bench_wait_byte(dp[0], ACC_TIMEOUT_MS + 5000);
	if (b != 0) {
		fprintf(stderr, "readyd-bench: accept %s: the client failed (%d)\n", mode_name[mode], b);
		r = b < 0 ? b : -EIO;
		goto out;
	}
	bench_sleep_ms(ACC_SETTLE_MS);
	uint64_t acc = 0;
	for (int i = 0; i < ACC_WORKERS; i++) {
		acc += atomic_load(&a->sh->w[i].accepted);
		t->returns += atomic_load(&a->sh->w[i].returns);
		t->spurious += atomic_load(&a->sh->w[i].spurious);
		t->rearm_sleeps += atomic_load(&a->sh->w[i].rearm_sleeps);
	}
	t->sleeps += worker_ctxt(pids) - x0;
	if (mode == ACC_READYD) {
		t->daemon_cpu_ns += (uint64_t)(bench_cpu_ns(d->pid) - c0);
		long dz = bench_ctxt_switches(d->pid);
		t->daemon_sleeps += dz > dz0 ? (uint64_t)(dz - dz0) : 0;
	}
	t->conns += a->sh->done;
	t->ns += a->sh->ns;
	/* Every connection answered was accepted, once. */
	if (acc != a->sh->done || a->sh->done != (uint64_t)conns) {
		fprintf(stderr, "readyd-bench: accept %s: %llu accepted, %llu answered, %ld made\n",
			mode_name[mode], (unsigned long long)acc, (unsigned long long)a->sh->done, conns);
		r = -EPROTO;
	}
out:
	for (int i = 0; i < npids; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGKILL);
	for (int i = 0; i < npids; i++)
		if (pids[i] > 0)
			bench_stop_pid(pids[i], SIGKILL);
	close(rp[0]);
	close(rp[1]);
	close(dp[0]);
	close(dp[1]);
	if (mode == ACC_READYD)
		bench_wait_fds(d->pid, daemon_fds, 5000);
	return r;
}

static double per(uint64_t num, uint64_t den)
{
	return den ? (double)num / (double)den : 0;
}

int bench_accept(struct bench_run *run, struct bench_daemon *d)
{
	const struct bench_scale *sc = &run->o->sc;
	int nr = sc->reps < 64 ? sc->reps : 64;
	int chunks = sc->chunks > 0 ? sc->chunks : 1, r = 0;
	long seq = sc->accept_seq / chunks, burst = sc->accept_tput / chunks;
	double wake[ACC_MODES][64], ret[ACC_MODES][64], spur[ACC_MODES][64], rearm[64];
	double tput[2][64], tspur[2][64], dcpu[2][64], dwake[64];
	struct acc a = { .sock = d->sock, .lfd = -1 };
	socklen_t sl = sizeof(a.addr);

	if (seq < 1 || burst < 1)
		return -EINVAL;
	a.sh = mmap(NULL, sizeof(*a.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a.sh == MAP_FAILED)
		return -errno;
	a.addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	a.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a.lfd < 0 || bind(a.lfd, (struct sockaddr *)&a.addr, sizeof(a.addr)) < 0 ||
	    listen(a.lfd, ACC_BACKLOG) < 0 || getsockname(a.lfd, (struct sockaddr *)&a.addr, &sl) < 0) {
		r = -errno;
		fprintf(stderr, "readyd-bench: accept: listening on loopback: %s\n", strerror(-r));
		goto out;
	}
	int daemon_fds = bench_count_fds(d->pid);

	for (int rep = 0; rep < nr; rep++) {
		/* Wakeups: connections one at a time, 'chunks' phases of each mode, rotated. */
		struct acc_totals w[ACC_MODES] = { 0 };
		for (int c = 0; c < ACC_MODES * chunks; c++) {
			enum acc_mode m = (enum acc_mode)((rep + c) % ACC_MODES);
			r = acc_phase(&a, m, seq, 1, d, daemon_fds, &w[m]);
			if (r < 0)
				goto out;
		}
		for (int m = 0; m < ACC_MODES; m++) {
			uint64_t woken = w[m].sleeps > w[m].rearm_sleeps ? w[m].sleeps - w[m].rearm_sleeps : 0;
			wake[m][rep] = per(woken, w[m].conns);
			ret[m][rep] = per(w[m].returns, w[m].conns);
			spur[m][rep] = per(w[m].spurious, w[m].conns);
		}
		rearm[rep] = per(w[ACC_READYD].rearm_sleeps, w[ACC_READYD].conns);
		dwake[rep] = per(w[ACC_READYD].daemon_sleeps, w[ACC_READYD].conns);
		/* Throughput: ACC_INFLIGHT at once, readyd against EPOLLEXCLUSIVE. */
		struct acc_totals t[2] = { 0 };
		for (int c = 0; c < 2 * chunks; c++) {
			int k = (rep + c) % 2;
			r = acc_phase(&a, k ? ACC_EXCLUSIVE : ACC_READYD, burst, ACC_INFLIGHT, d, daemon_fds,
				      &t[k]);
			if (r < 0)
				goto out;
		}
		for (int k = 0; k < 2; k++) {
			tput[k][rep] = t[k].ns ? (double)t[k].conns * 1e9 / (double)t[k].ns : 0;
			tspur[k][rep] = per(t[k].spurious, t[k].conns);
		}
		dcpu[0][rep] = per(w[ACC_READYD].daemon_cpu_ns, w[ACC_READYD].conns);
		dcpu[1][rep] = per(t[0].daemon_cpu_ns, t[0].conns);
		if (bench_verbose)
			fprintf(stderr, "accept rep %d: wakeups/conn readyd %.3f herd %.3f exclusive %.3f; "
				"returns/conn %.3f %.3f %.3f; rd_rearm sleeps/conn %.3f; conns/s readyd %.0f "
				"exclusive %.0f, spurious/conn %.3f %.3f\n", rep, wake[0][rep], wake[1][rep],
				wake[2][rep], ret[0][rep], ret[1][rep], ret[2][rep], rearm[rep], tput[0][rep],
				tput[1][rep], tspur[0][rep], tspur[1][rep]);
	}

	struct bench_result *x = bench_add(run, "accept_wakeups_per_connection", "wakeups/conn", false,
					   "epoll herd");
	x->readyd = bench_median(wake[ACC_READYD], nr);
	x->baseline = bench_median(wake[ACC_HERD], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "%d workers, %ld connections one at a time per repetition; a wakeup is a worker's sleep "
		 "in the wait that ended; the wait returned: readyd %.2f, herd %.2f /conn; not in the "
		 "row, per conn: readyd's workers also sleep %.2f in rd_rearm, and the daemon itself "
		 "wakes %.2f times (CPU %.0f us)", ACC_WORKERS, seq * chunks,
		 bench_median(ret[ACC_READYD], nr), bench_median(ret[ACC_HERD], nr),
		 bench_median(rearm, nr), bench_median(dwake, nr), bench_median(dcpu[0], nr) / 1000);
	x = bench_add(run, "accept_wakeups_per_connection_exclusive", "wakeups/conn", false,
		      "EPOLLEXCLUSIVE");
	x->readyd = bench_median(wake[ACC_READYD], nr);
	x->baseline = bench_median(wake[ACC_EXCLUSIVE], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "extra row: the same connections against EPOLLEXCLUSIVE (\"one or more\" woken); "
		 "per conn its wait returned %.3f, spurious %.3f", bench_median(ret[ACC_EXCLUSIVE], nr),
		 bench_median(spur[ACC_EXCLUSIVE], nr));
	x = bench_add(run, "accept_throughput", "conns/s", true, "EPOLLEXCLUSIVE");
	x->readyd = bench_median(tput[0], nr);
	x->baseline = bench_median(tput[1], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "%d workers, one accept per wakeup; %d connecting at once, %ld per repetition; "
		 "spurious/conn: readyd %.3f, EPOLLEXCLUSIVE %.3f; daemon CPU %.1f us/conn",
		 ACC_WORKERS, ACC_INFLIGHT, burst * chunks, bench_median(tspur[0], nr),
		 bench_median(tspur[1], nr), bench_median(dcpu[1], nr) / 1000);
	r = 0;
out:
	if (a.lfd >= 0)
		close(a.lfd);
	munmap(a.sh, sizeof(*a.sh));
	if (r < 0)
		fprintf(stderr, "readyd-bench: accept: %s\n", strerror(-r));
	return r;
}
