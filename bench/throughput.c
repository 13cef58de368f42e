/* event_throughput, event_throughput_100_clients: events per second delivered to the
 * clients while a writer makes 1,000 registrations ready, then 10,000, repeatedly.
 *
 * The registrations are dups of two eventfds: 'small' of them of A and the rest of B, so
 * one write to A makes 1,000 registrations ready and a write to A and B all 10,000. The
 * writer's cost is then two syscalls a round, and what is measured is the path from the
 * kernel's wakeups to the clients (every dup is its own epoll item, in readyd and in the
 * relay alike). A round ends when the clients have received all its events: they count
 * them in shared memory, and the one that completes the round tells the writer. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "bench.h"
#include "readyd.h"

#define CLIENTS_MAX 256

struct tput_shared {
	_Atomic uint64_t delivered; /* events received by all clients */
	_Atomic uint64_t target;    /* delivered at the end of the current round */
};

struct tput {
	struct tput_shared *sh;
	const char *sock;
	int efd[2];       /* A, B */
	int per_a;        /* registrations of A per client */
	int per_b;        /* registrations of B per client */
	int nclients;
	int ready_w;
	int done_r, done_w;
	int relay_socks[CLIENTS_MAX];  /* the relay's ends */
	int client_socks[CLIENTS_MAX]; /* the clients' ends */
	int idx;          /* in a child: which client this is */
};

/* Count n events; the client that completes the round tells the writer. */
static void account(struct tput *t, uint64_t n)
{
	uint64_t prev = atomic_fetch_add(&t->sh->delivered, n);
	uint64_t target = atomic_load(&t->sh->target);
	if (prev < target && prev + n >= target)
		bench_say(t->done_w, 0);
}

static int client_readyd(void *arg)
{
	struct tput *t = arg;
	static struct rd_event ev[4096];
	int n = t->per_a + t->per_b;
	struct rd_entry *e = calloc((size_t)n, sizeof(*e));
	rd_client *c;

	if (!e || rd_open(&c, t->sock) < 0) {
		bench_say(t->ready_w, 1);
		return 1;
	}
	for (int i = 0; i < n; i++)
		e[i] = (struct rd_entry){ .fd = dup(t->efd[i < t->per_a ? 0 : 1]), .token = (uint64_t)i,
					  .interest = RD_READABLE, .flags = RD_EDGE };
	int ok = rd_add_batch(c, e, (size_t)n);
	for (int i = 0; i < n; i++)
		close(e[i].fd);
	free(e);
	bench_say(t->ready_w, ok == n ? 0 : 2);
	if (ok != n)
		return 2;
	for (;;) {
		int k = rd_wait(c, ev, 4096, -1);
		if (k < 0)
			return 3;
		account(t, (uint64_t)k);
	}
}

static int client_relay(void *arg)
{
	struct tput *t = arg;
	static uint8_t buf[RDP_EVENTS_MAX * RDP_EVENT_SIZE];
	int fd = t->client_socks[t->idx];
	uint64_t sum = 0;

	bench_say(t->ready_w, 0);
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return (int)(sum & 1) + 3;
		/* Look at every record, as libreadyd decodes every record. */
		uint64_t k = (uint64_t)n / RDP_EVENT_SIZE;
		for (uint64_t i = 0; i < k; i++)
			sum += rdp_le64(buf + i * RDP_EVENT_SIZE);
		account(t, k);
	}
}

static int relay_tput(void *arg)
{
	struct tput *t = arg;
	int epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		goto fail;
	for (int c = 0; c < t->nclients; c++)
		for (int i = 0; i < t->per_a + t->per_b; i++) {
			int fd = dup(t->efd[i < t->per_a ? 0 : 1]);
			if (fd < 0 || relay_watch(epfd, fd, (uint32_t)c, (uint32_t)i) < 0)
				goto fail;
		}
	struct relay_cfg cfg = { .epfd = epfd, .socks = t->relay_socks, .nsocks = t->nclients,
				 .ready_fd = t->ready_w };
	return relay_run(&cfg);
fail:
	bench_say(t->ready_w, 1);
	return 1;
}

/* Time 'rounds' rounds, adding their events and nanoseconds to *events and *ns. */
static int run_rounds(struct tput *t, long rounds, int small, int large, int timeout_ms,
		      uint64_t *events, uint64_t *ns)
{
	uint64_t one = 1;
	for (long r = 0; r < rounds; r++) {
		int n = r % 2 == 0 ? small : large;
		atomic_fetch_add(&t->sh->target, (uint64_t)n);
		uint64_t t0 = bench_now_ns();
		if (write(t->efd[0], &one, sizeof(one)) != sizeof(one))
			return -errno;
		if (n == large && write(t->efd[1], &one, sizeof(one)) != sizeof(one))
			return -errno;
		int b = bench_wait_byte(t->done_r, timeout_ms);
		uint64_t t1 = bench_now_ns();
		if (b < 0) {
			fprintf(stderr, "readyd-bench: throughput: round %ld: %llu of %llu events after %d ms\n",
				r, (unsigned long long)atomic_load(&t->sh->delivered),
				(unsigned long long)atomic_load(&t->sh->target), timeout_ms);
			return b;
		}
		*ns += t1 - t0;
		*events += (uint64_t)n;
	}
	return 0;
}

/* One phase: start readyd's clients or the relay and its clients, run the rounds, stop
 * them. Adds to *events and *ns; returns 0 or -errno. */
static int tput_phase(struct tput *t, bool relay, int warm, long rounds, int small, int large,
		      pid_t daemon, int daemon_fds, int timeout_ms, uint64_t *events, uint64_t *ns,
		      uint64_t cpu[2])
{
	int rp[2];
	pid_t pids[CLIENTS_MAX + 1];
	int npids = 0, r;
	uint64_t wev = 0, wns = 0;

	if (pipe(rp) < 0)
		return -errno;
	t->ready_w = rp[1];
	atomic_store(&t->sh->delivered, 0);
	atomic_store(&t->sh->target, 0);
	bench_drain(t->done_r);
	/* Counters at zero: a registration made now must not start out ready. */
	bench_drain(t->efd[0]);
	bench_drain(t->efd[1]);
	if (relay)
		pids[npids++] = bench_fork(relay_tput, t);
	for (int c = 0; c < t->nclients; c++) {
		t->idx = c; /* the child gets its own copy */
		pids[npids++] = bench_fork(relay ? client_relay : client_readyd, t);
	}
	for (int i = 0; i < npids; i++) {
		int b = pids[i] < 0 ? pids[i] : bench_wait_byte(rp[0], timeout_ms);
		if (b != 0) {
			fprintf(stderr, "readyd-bench: throughput %s: a process did not start (%d)\n",
				relay ? "relay" : "readyd", b);
			r = b < 0 ? b : -EIO;
			goto out;
		}
	}
	r = run_rounds(t, warm, small, large, timeout_ms, &wev, &wns);
	/* CPU time of the middle process (readyd or the relay) and of the clients. */
	pid_t mid = relay ? pids[0] : daemon;
	int64_t m0 = bench_cpu_ns(mid), c0 = 0;
	for (int i = relay; i < npids; i++)
		c0 += bench_cpu_ns(pids[i]);
	if (r == 0)
		r = run_rounds(t, rounds, small, large, timeout_ms, events, ns);
	if (r == 0 && cpu) {
		int64_t c1 = 0;
		for (int i = relay; i < npids; i++)
			c1 += bench_cpu_ns(pids[i]);
		cpu[0] += (uint64_t)(bench_cpu_ns(mid) - m0);
		cpu[1] += (uint64_t)(c1 - c0);
	}
	if (r == 0) {
		/* Every event once: more would mean the rounds were not what we think. */
		bench_sleep_ms(2);
		uint64_t got = atomic_load(&t->sh->delivered), want = atomic_load(&t->sh->target);
		if (got != want) {
			fprintf(stderr, "readyd-bench: throughput %s: %llu events delivered, %llu expected\n",
				relay ? "relay" : "readyd", (unsigned long long)got, (unsigned long long)want);
			r = -EPROTO;
		}
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
	if (!relay && daemon > 0)
		bench_wait_fds(daemon, daemon_fds, 5000);
	return r;
}

static int tput_open(struct tput *t, const char *sock, int nclients, int small, int large)
{
	int dp[2];
	memset(t, 0, sizeof(*t));
	if (nclients < 1 || nclients > CLIENTS_MAX || small % nclients || (large - small) % nclients)
		return -EINVAL;
	t->sh = mmap(NULL, sizeof(*t->sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (t->sh == MAP_FAILED)
		return -errno;
	t->sock = sock;
	t->nclients = nclients;
	t->per_a = small / nclients;
	t->per_b = (large - small) / nclients;
	t->efd[0] = eventfd(0, EFD_NONBLOCK);
	t->efd[1] = eventfd(0, EFD_NONBLOCK);
	if (t->efd[0] < 0 || t->efd[1] < 0 || pipe(dp) < 0)
		return -errno;
	t->done_r = dp[0];
	t->done_w = dp[1];
	for (int c = 0; c < nclients; c++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0)
			return -errno;
		t->relay_socks[c] = sv[0];
		t->client_socks[c] = sv[1];
	}
	return 0;
}

static void tput_close(struct tput *t)
{
	for (int c = 0; c < t->nclients; c++) {
		close(t->relay_socks[c]);
		close(t->client_socks[c]);
	}
	close(t->efd[0]);
	close(t->efd[1]);
	close(t->done_r);
	close(t->done_w);
	munmap(t->sh, sizeof(*t->sh));
}

int bench_throughput(struct bench_run *run, struct bench_daemon *d, int nclients)
{
	const struct bench_scale *sc = &run->o->sc;
	struct tput t;
	double rd[64], rl[64], cpu_rd[2][64], cpu_rl[2][64];
	int nr = sc->reps < 64 ? sc->reps : 64;
	int chunks = sc->chunks > 0 ? sc->chunks : 1;
	long per_chunk = (sc->tput_rounds / chunks + 1) & ~1L; /* as many small rounds as large */
	int r = tput_open(&t, d->sock, nclients, sc->tput_small, sc->tput_regs);
	if (r < 0) {
		fprintf(stderr, "readyd-bench: throughput setup: %s\n", strerror(-r));
		return r;
	}
	int daemon_fds = bench_count_fds(d->pid);
	for (int rep = 0; rep < nr; rep++) {
		/* A repetition is 'chunks' phases of each, alternating, each with fresh
		 * processes: one unlucky placement of three processes on two CPUs is diluted. */
		uint64_t ev[2] = { 0, 0 }, ns[2] = { 0, 0 }, cpu[2][2] = { { 0, 0 }, { 0, 0 } };
		for (int c = 0; c < 2 * chunks; c++) {
			bool relay = (rep + c) % 2;
			r = tput_phase(&t, relay, 2, per_chunk, sc->tput_small, sc->tput_regs, d->pid,
				       daemon_fds, 10000, &ev[relay], &ns[relay], cpu[relay]);
			if (r < 0)
				goto out;
		}
		rd[rep] = ns[0] ? (double)ev[0] * 1e9 / (double)ns[0] : 0;
		rl[rep] = ns[1] ? (double)ev[1] * 1e9 / (double)ns[1] : 0;
		for (int k = 0; k < 2; k++) {
			cpu_rd[k][rep] = ev[0] ? (double)cpu[0][k] / (double)ev[0] : 0;
			cpu_rl[k][rep] = ev[1] ? (double)cpu[1][k] / (double)ev[1] : 0;
		}
		if (bench_verbose)
			fprintf(stderr, "throughput %d clients rep %d: readyd %.0f relay %.0f events/s; "
				"CPU ns/event: readyd %.1f, its clients %.1f; relay %.1f, its clients %.1f\n",
				nclients, rep, rd[rep], rl[rep], cpu_rd[0][rep], cpu_rd[1][rep],
				cpu_rl[0][rep], cpu_rl[1][rep]);
	}
	struct bench_result *x = bench_add(run, nclients == 1 ? "event_throughput" : "event_throughput_100_clients",
					   "events/s", true, "relay");
	x->readyd = bench_median(rd, nr);
	x->baseline = bench_median(rl, nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "%d client%s, %d registrations; per repetition %ld rounds (%d ready, then %d) in %d "
		 "phases of each; CPU ns/event: readyd %.0f (clients %.0f), relay %.0f (clients %.0f)",
		 nclients, nclients == 1 ? "" : "s", sc->tput_regs, per_chunk * chunks, sc->tput_small,
		 sc->tput_regs, chunks, bench_median(cpu_rd[0], nr), bench_median(cpu_rd[1], nr),
		 bench_median(cpu_rl[0], nr), bench_median(cpu_rl[1], nr));
	r = 0;
out:
	tput_close(&t);
	return r;
}

long bench_profile_throughput(struct bench_opts *o, struct bench_daemon *d, int nclients, long rounds)
{
	struct tput t;
	uint64_t events = 0, ns = 0;
	int r = tput_open(&t, d->sock, nclients, o->sc.tput_small, o->sc.tput_regs);
	if (r < 0)
		return r;
	r = tput_phase(&t, false, 0, rounds, o->sc.tput_small, o->sc.tput_regs, d->pid,
		       bench_count_fds(d->pid), 600000, &events, &ns, NULL);
	tput_close(&t);
	return r < 0 ? r : (long)events;
}
