/* notify_rtt_*: one byte written to a watched pipe, then to a watched socket, and so on
 * alternately. The client learns of it, reads the byte and answers on a reply pipe; the
 * writer times the full round trip. Three ways for the client to learn, on the same
 * fds, one after the other within each repetition:
 *   readyd  writer -> readyd -> client            (libreadyd rd_wait)
 *   relay   writer -> bare relay -> client        (16-byte record over SEQPACKET)
 *   direct  writer -> client                      (the client's own epoll, a reference) */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "bench.h"
#include "readyd.h"

enum { MODE_READYD, MODE_RELAY, MODE_DIRECT, MODE_N };
static const char *const mode_name[MODE_N] = { "readyd", "relay", "direct" };

/* The fds of the scenario; children inherit them all. */
struct notify_fds {
	int watch[2];  /* watched: token 0 is a pipe's read end, token 1 a stream socket */
	int poke[2];   /* the writer's ends of the same pipe and socket */
	int reply_r;   /* the writer waits here */
	int reply_w;
};

struct notify_child {
	const char *sock;        /* readyd's socket */
	const struct notify_fds *f;
	int ready_fd;
	int seq_fd;              /* relay mode: the client's end of the relay's socket */
};

/* Read the byte that made token ready and answer. An event with nothing to read (allowed:
 * readiness may be spurious) gets no answer. */
static void answer(const struct notify_fds *f, uint64_t token)
{
	char buf[64];
	if (token > 1)
		return;
	if (read(f->watch[token], buf, sizeof(buf)) > 0)
		while (write(f->reply_w, "x", 1) < 0 && errno == EINTR)
			;
}

static int client_readyd(void *arg)
{
	const struct notify_child *a = arg;
	rd_client *c;
	struct rd_event ev[16];

	if (rd_open(&c, a->sock) < 0 ||
	    rd_add(c, a->f->watch[0], 0, RD_READABLE, RD_EDGE) < 0 ||
	    rd_add(c, a->f->watch[1], 1, RD_READABLE, RD_EDGE) < 0) {
		bench_say(a->ready_fd, 1);
		return 1;
	}
	bench_say(a->ready_fd, 0);
	for (;;) {
		int n = rd_wait(c, ev, 16, -1);
		if (n < 0)
			return 2;
		for (int i = 0; i < n; i++)
			answer(a->f, ev[i].token);
	}
}

static int client_relay(void *arg)
{
	const struct notify_child *a = arg;
	uint8_t buf[RDP_EVENTS_MAX * RDP_EVENT_SIZE];

	bench_say(a->ready_fd, 0);
	for (;;) {
		ssize_t n = recv(a->seq_fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 2;
		for (size_t i = 0; i + RDP_EVENT_SIZE <= (size_t)n; i += RDP_EVENT_SIZE)
			answer(a->f, rdp_le64(buf + i));
	}
}

static int relay_notify(void *arg)
{
	const struct notify_child *a = arg;
	int epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0 || relay_watch(epfd, a->f->watch[0], 0, 0) < 0 ||
	    relay_watch(epfd, a->f->watch[1], 0, 1) < 0) {
		bench_say(a->ready_fd, 1);
		return 1;
	}
	struct relay_cfg cfg = { .epfd = epfd, .socks = &a->seq_fd, .nsocks = 1,
				 .ready_fd = a->ready_fd };
	return relay_run(&cfg);
}

static int client_direct(void *arg)
{
	const struct notify_child *a = arg;
	struct epoll_event evs[16];
	int epfd = epoll_create1(EPOLL_CLOEXEC);
	for (int t = 0; t < 2; t++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)t };
		if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, a->f->watch[t], &ev) < 0) {
			bench_say(a->ready_fd, 1);
			return 1;
		}
	}
	bench_say(a->ready_fd, 0);
	for (;;) {
		int n = epoll_wait(epfd, evs, 16, -1);
		if (n < 0 && errno != EINTR)
			return 2;
		for (int i = 0; i < n; i++)
			answer(a->f, evs[i].data.u64);
	}
}

static volatile sig_atomic_t alarm_fired;

static void on_alarm(int sig)
{
	(void)sig;
	alarm_fired = 1;
}

/* Time 'warm' + 'n' round trips, keeping the last n in out[] (microseconds). The reply
 * is awaited with a blocking read, guarded by an alarm so a lost answer cannot hang. */
static int ping(const struct notify_fds *f, int warm, int n, double *out, int timeout_s)
{
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART: read fails */
	sigaction(SIGALRM, &sa, NULL);
	alarm_fired = 0;
	alarm((unsigned)timeout_s);
	int r = 0;
	for (int i = 0; i < warm + n; i++) {
		char b;
		int fd = f->poke[i & 1];
		uint64_t t0 = bench_now_ns();
		if (write(fd, "x", 1) != 1) {
			r = -errno;
			break;
		}
		ssize_t k;
		do
			k = read(f->reply_r, &b, 1);
		while (k < 0 && errno == EINTR && !alarm_fired);
		uint64_t t1 = bench_now_ns();
		if (k != 1) {
			r = alarm_fired ? -ETIMEDOUT : k == 0 ? -EPIPE : -errno;
			break;
		}
		if (i >= warm)
			out[i - warm] = (double)(t1 - t0) / 1000.0;
	}
	alarm(0);
	return r;
}

/* Start the processes of one mode, time the round trips, stop the processes. */
static int notify_phase(int mode, struct bench_daemon *d, const struct notify_fds *f, int warm,
			int n, double *out, int daemon_fds, int timeout_s, uint64_t cpu[3])
{
	int rp[2], q[2] = { -1, -1 };
	pid_t pids[2] = { 0, 0 };
	int npids = 0, r = 0;

	if (pipe(rp) < 0)
		return -errno;
	struct notify_child a = { .sock = d ? d->sock : NULL, .f = f, .ready_fd = rp[1] };
	struct notify_child relay = a;
	switch (mode) {
	case MODE_READYD:
		pids[npids++] = bench_fork(client_readyd, &a);
		break;
	case MODE_RELAY:
		if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) < 0) {
			r = -errno;
			goto out;
		}
		relay.seq_fd = q[0];
		a.seq_fd = q[1];
		pids[npids++] = bench_fork(relay_notify, &relay);
		pids[npids++] = bench_fork(client_relay, &a);
		break;
	default:
		pids[npids++] = bench_fork(client_direct, &a);
		break;
	}
	if (q[0] >= 0) {
		close(q[0]);
		close(q[1]);
	}
	for (int i = 0; i < npids; i++) {
		int b = pids[i] < 0 ? pids[i] : bench_wait_byte(rp[0], timeout_s * 1000);
		if (b != 0) {
			fprintf(stderr, "readyd-bench: notify %s: a process did not start (%d)\n",
				mode_name[mode], b);
			r = b < 0 ? b : -EIO;
			goto out;
		}
	}
	/* CPU time of the middle process (readyd, the relay; none for direct) and of the
	 * client, per round trip. */
	pid_t mid = mode == MODE_READYD ? d->pid : mode == MODE_RELAY ? pids[0] : 0;
	pid_t cli = pids[npids - 1];
	int64_t m0 = mid ? bench_cpu_ns(mid) : 0, c0 = bench_cpu_ns(cli);
	r = ping(f, warm, n, out, timeout_s);
	if (r == 0 && cpu) {
		cpu[0] += (uint64_t)((mid ? bench_cpu_ns(mid) : 0) - m0);
		cpu[1] += (uint64_t)(bench_cpu_ns(cli) - c0);
		cpu[2] += (uint64_t)(warm + n);
	}
	if (r < 0)
		fprintf(stderr, "readyd-bench: notify %s: round trip failed: %s\n", mode_name[mode],
			strerror(-r));
out:
	for (int i = 0; i < npids; i++)
		if (pids[i] > 0)
			bench_stop_pid(pids[i], SIGTERM); /* exits normally: see bench_fork */
	close(rp[0]);
	close(rp[1]);
	for (int t = 0; t < 2; t++)
		bench_drain(f->watch[t]);
	bench_drain(f->reply_r);
	/* The daemon drops the client's registrations when it sees the hang-up; wait, so it
	 * does not wake for the next mode's bytes. */
	if (mode == MODE_READYD && d)
		bench_wait_fds(d->pid, daemon_fds, 2000);
	return r;
}

static int notify_fds_open(struct notify_fds *f)
{
	int p[2], s[2], rp[2];
	if (pipe2(p, O_NONBLOCK) < 0)
		return -errno;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) < 0 || pipe(rp) < 0)
		return -errno;
	*f = (struct notify_fds){ .watch = { p[0], s[0] }, .poke = { p[1], s[1] },
				  .reply_r = rp[0], .reply_w = rp[1] };
	return 0;
}

static void notify_fds_close(struct notify_fds *f)
{
	for (int t = 0; t < 2; t++) {
		close(f->watch[t]);
		close(f->poke[t]);
	}
	close(f->reply_r);
	close(f->reply_w);
}

static double cpu_us(const uint64_t cpu[3], int which)
{
	return cpu[2] ? (double)cpu[which] / 1000.0 / (double)cpu[2] : 0.0 / 0.0;
}

/* Pooled samples of one mode, thinned to at most 'max' points, as a CDF block. */
static void write_cdf(FILE *out, const char *name, double *v, int n, int max)
{
	bench_quantile(v, n, 0.5); /* sorts */
	fprintf(out, "# %s: %d samples; latency_us fraction_at_or_below\n", name, n);
	/* Thin the body, keep every sample of the slowest 1% (the tail plot needs them). */
	int step = n > max ? n / max : 1, tail = n - n / 100;
	for (int i = 0; i < n; i += i >= tail ? 1 : step)
		fprintf(out, "%.3f %.6f\n", v[i], (double)(i + 1) / n);
	fprintf(out, "\n\n");
}

/* The samples of one series: 'reps' repetitions of each mode in 'modes', each a
 * number of phases with fresh processes, the order rotated so that no mode always runs
 * first. p50/p99 get each repetition's quantiles; all[m] the pooled samples. */
struct notify_series {
	int modes;                /* bit m: run mode m */
	double *all[MODE_N];      /* reps * n samples each */
	double p50[MODE_N][64], p99[MODE_N][64];
	uint64_t cpu[MODE_N][3];
	int reps;
};

static int notify_run_series(const struct bench_scale *sc, struct bench_daemon *d,
			     const struct notify_fds *f, struct notify_series *ser, double *tmp)
{
	int n = sc->notify_samples, daemon_fds = bench_count_fds(d->pid);
	int chunks = sc->chunks > 0 ? sc->chunks : 1, per = n / chunks;
	ser->reps = sc->reps < 64 ? sc->reps : 64;
	for (int rep = 0; rep < ser->reps; rep++) {
		for (int ch = 0; ch < chunks; ch++)
			for (int k = 0; k < MODE_N; k++) {
				int m = (rep + ch + k) % MODE_N;
				if (!(ser->modes & 1 << m))
					continue;
				int cnt = ch == chunks - 1 ? n - per * ch : per;
				double *s = ser->all[m] + (size_t)rep * (size_t)n + (size_t)(per * ch);
				int r = notify_phase(m, d, f, sc->notify_warmup, cnt, s, daemon_fds, 30,
						     ser->cpu[m]);
				if (r < 0)
					return r;
			}
		for (int m = 0; m < MODE_N; m++) {
			if (!(ser->modes & 1 << m))
				continue;
			memcpy(tmp, ser->all[m] + (size_t)rep * (size_t)n, sizeof(double) * (size_t)n);
			ser->p50[m][rep] = bench_quantile(tmp, n, 0.50);
			ser->p99[m][rep] = bench_quantile(tmp, n, 0.99);
		}
		if (bench_verbose)
			fprintf(stderr, "notify%s rep %d: p50 readyd %.1f relay %.1f direct %.1f; "
				"p99 readyd %.1f relay %.1f direct %.1f us\n",
				ser->modes & 1 << MODE_DIRECT ? "" : " (one vCPU)", rep,
				ser->p50[0][rep], ser->p50[1][rep], ser->p50[2][rep], ser->p99[0][rep],
				ser->p99[1][rep], ser->p99[2][rep]);
	}
	return 0;
}

/* Pin this process (and so the children it forks) and the daemon to one CPU, or undo
 * that. Returns 0, or -errno when the machine does not let us. */
static int pin_one_cpu(pid_t daemon, cpu_set_t *saved_self, cpu_set_t *saved_daemon, bool undo)
{
	if (undo) {
		sched_setaffinity(daemon, sizeof(*saved_daemon), saved_daemon);
		return sched_setaffinity(0, sizeof(*saved_self), saved_self) < 0 ? -errno : 0;
	}
	if (sched_getaffinity(0, sizeof(*saved_self), saved_self) < 0 ||
	    sched_getaffinity(daemon, sizeof(*saved_daemon), saved_daemon) < 0)
		return -errno;
	int cpu = -1;
	for (int i = 0; i < CPU_SETSIZE && cpu < 0; i++)
		if (CPU_ISSET(i, saved_self) && CPU_ISSET(i, saved_daemon))
			cpu = i;
	if (cpu < 0)
		return -EINVAL;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(0, sizeof(one), &one) < 0)
		return -errno;
	if (sched_setaffinity(daemon, sizeof(one), &one) < 0) {
		int r = -errno;
		sched_setaffinity(0, sizeof(*saved_self), saved_self);
		return r;
	}
	return 0;
}

/* A row of readyd against the relay: the medians over nr repetitions of quantile q. */
static struct bench_result *vs_relay(struct bench_run *run, const char *name,
				     double q[MODE_N][64], int nr)
{
	struct bench_result *x = bench_add(run, name, "us", false, "relay");
	x->readyd = bench_median(q[MODE_READYD], nr);
	x->baseline = bench_median(q[MODE_RELAY], nr);
	x->reps = nr;
	return x;
}

int bench_notify(struct bench_run *run, struct bench_daemon *d)
{
	const struct bench_scale *sc = &run->o->sc;
	int n = sc->notify_samples;
	struct notify_fds f;
	int r = notify_fds_open(&f);
	if (r < 0)
		return r;
	struct notify_series *ser = calloc(1, sizeof(*ser)), *one = calloc(1, sizeof(*one));
	double *tmp = malloc(sizeof(double) * (size_t)n);
	if (!ser || !one || !tmp) {
		r = -ENOMEM;
		goto out;
	}
	ser->modes = 1 << MODE_READYD | 1 << MODE_RELAY | 1 << MODE_DIRECT;
	one->modes = 1 << MODE_READYD | 1 << MODE_RELAY;
	for (int m = 0; m < MODE_N; m++) {
		size_t sz = sizeof(double) * (size_t)n * (size_t)(sc->reps < 64 ? sc->reps : 64);
		ser->all[m] = malloc(sz);
		one->all[m] = malloc(sz);
		if (!ser->all[m] || !one->all[m]) {
			r = -ENOMEM;
			goto out;
		}
	}
	r = notify_run_series(sc, d, &f, ser, tmp);
	if (r < 0)
		goto out;
	/* Where the scheduler puts the three processes decides a round trip more than any
	 * process's own work: a wakeup on the same vCPU costs a few microseconds, one on the
	 * other vCPU an interrupt to wake it. Pinned to one vCPU every run is in the first
	 * regime, which shows the CPU the hop itself costs. An extra row, not a target. */
	cpu_set_t saved_self, saved_daemon;
	bool pinned = !run->o->smoke && pin_one_cpu(d->pid, &saved_self, &saved_daemon, false) == 0;
	if (pinned) {
		r = notify_run_series(sc, d, &f, one, tmp);
		pin_one_cpu(d->pid, &saved_self, &saved_daemon, true);
		if (r < 0)
			goto out;
	}

	int nr = ser->reps;
	struct bench_result *x = vs_relay(run, "notify_rtt_p50", ser->p50, nr);
	snprintf(x->note, sizeof(x->note),
		 "median over %d repetitions of the p50 of %d round trips; CPU us per round trip: "
		 "readyd %.2f (client %.2f), relay %.2f (client %.2f), direct client %.2f", nr, n,
		 cpu_us(ser->cpu[MODE_READYD], 0), cpu_us(ser->cpu[MODE_READYD], 1),
		 cpu_us(ser->cpu[MODE_RELAY], 0), cpu_us(ser->cpu[MODE_RELAY], 1),
		 cpu_us(ser->cpu[MODE_DIRECT], 1));
	x = vs_relay(run, "notify_rtt_p99", ser->p99, nr);
	snprintf(x->note, sizeof(x->note), "median over %d repetitions of the p99 of %d round trips", nr, n);
	x = bench_add(run, "notify_rtt_direct_p50", "us", false, NULL);
	x->readyd = bench_median(ser->p50[MODE_DIRECT], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "reference, not a target: the client's own epoll, no readyd in the path (p99 %.1f us)",
		 bench_median(ser->p99[MODE_DIRECT], nr));
	if (pinned) {
		x = vs_relay(run, "notify_rtt_p50_one_vcpu", one->p50, nr);
		snprintf(x->note, sizeof(x->note),
			 "extra row: the same with the writer, readyd (or the relay) and the client "
			 "on one vCPU; p99 readyd %.1f, relay %.1f us; CPU us per round trip: readyd "
			 "%.2f (client %.2f), relay %.2f (client %.2f)",
			 bench_median(one->p99[MODE_READYD], nr), bench_median(one->p99[MODE_RELAY], nr),
			 cpu_us(one->cpu[MODE_READYD], 0), cpu_us(one->cpu[MODE_READYD], 1),
			 cpu_us(one->cpu[MODE_RELAY], 0), cpu_us(one->cpu[MODE_RELAY], 1));
	}

	if (run->o->plot_data) {
		FILE *out = fopen(run->o->plot_data, "w");
		if (!out) {
			r = -errno;
			fprintf(stderr, "readyd-bench: %s: %s\n", run->o->plot_data, strerror(-r));
			goto out;
		}
		fprintf(out, "# readyd-bench notify round trips, pooled over %d repetitions; "
			     "gnuplot index 0 readyd, 1 relay, 2 direct\n", nr);
		for (int m = 0; m < MODE_N; m++)
			write_cdf(out, mode_name[m], ser->all[m], n * nr, 4000);
		fclose(out);
	}
	r = 0;
out:
	free(tmp);
	for (int m = 0; m < MODE_N; m++) {
		if (ser)
			free(ser->all[m]);
		if (one)
			free(one->all[m]);
	}
	free(ser);
	free(one);
	notify_fds_close(&f);
	return r;
}

long bench_profile_notify(struct bench_opts *o, struct bench_daemon *d, long trips, const char *mode)
{
	(void)o;
	struct notify_fds f;
	int r = notify_fds_open(&f);
	if (r < 0)
		return r;
	double *s = malloc(sizeof(double) * (size_t)(trips > 0 ? trips : 1));
	if (!s) {
		notify_fds_close(&f);
		return -ENOMEM;
	}
	int m = MODE_READYD;
	while (m < MODE_N && strcmp(mode_name[m], mode) != 0)
		m++;
	if (m == MODE_N) {
		free(s);
		notify_fds_close(&f);
		return -EINVAL;
	}
	r = notify_phase(m, d, &f, 0, (int)trips, s, bench_count_fds(d->pid), 600, NULL);
	free(s);
	notify_fds_close(&f);
	return r < 0 ? r : trips;
}
