/* What registrations cost the daemon while nothing happens: rss_per_registration (VmRSS
 * growth, each repetition in a fresh daemon, since its tables never shrink) and idle_cpu
 * (its CPU time while 10,000 registrations sit idle). The registrations are dups of one
 * eventfd, handed over 253 at a time, so the client never holds more than that. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../daemon/rdd.h"
#include "bench.h"
#include "readyd.h"

/* Register up to 'want' dups of efd, tokens from *next on. Returns how many were
 * accepted (fewer when the daemon refused some: its fd limit), or -errno. */
static long register_dups(rd_client *c, int efd, long want, uint64_t *next)
{
	struct rd_entry e[RD_BATCH_MAX];
	long ok = 0;
	while (ok < want) {
		int n = want - ok < RD_BATCH_MAX ? (int)(want - ok) : RD_BATCH_MAX;
		for (int i = 0; i < n; i++)
			e[i] = (struct rd_entry){ .fd = dup(efd), .token = (*next)++,
						  .interest = RD_READABLE, .flags = RD_EDGE };
		int r = rd_add_batch(c, e, (size_t)n);
		for (int i = 0; i < n; i++)
			close(e[i].fd);
		if (r < 0)
			return r;
		ok += r;
		if (r < n)
			break;
	}
	return ok;
}

/* The kernel's slab memory, machine-wide (Slab: in /proc/meminfo), in KiB. */
static long slab_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Slab: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static long settled_rss(pid_t pid)
{
	bench_sleep_ms(20);
	return bench_rss_kib(pid);
}

int bench_rss(struct bench_run *run)
{
	const struct bench_scale *sc = &run->o->sc;
	int nr = sc->reps < 64 ? sc->reps : 64;
	double at_n[64], at_lim[64], kern[64];
	long lim_regs = 0;
	struct rlimit rl = { 0 };
	getrlimit(RLIMIT_NOFILE, &rl);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0)
		return -errno;
	for (int rep = 0; rep < nr; rep++) {
		struct bench_daemon d;
		rd_client *c = NULL;
		uint64_t tok = 0;
		int r = bench_daemon_start(&d, run->o->readyd, NULL);
		if (r < 0) {
			fprintf(stderr, "readyd-bench: rss: starting readyd: %s\n", strerror(-r));
			close(efd);
			return r;
		}
		r = rd_open(&c, d.sock);
		long rss0 = r < 0 ? -1 : settled_rss(d.pid), slab0 = slab_kib();
		long n = r < 0 ? r : register_dups(c, efd, sc->rss_regs, &tok);
		long rss1 = settled_rss(d.pid), slab1 = slab_kib();
		long more = 0, rss2 = rss1;
		if (n == sc->rss_regs && sc->rss_limit) {
			/* On to the fd limit: until the daemon refuses (EMFILE), bounded. */
			more = register_dups(c, efd, (long)rl.rlim_cur, &tok);
			rss2 = settled_rss(d.pid);
		}
		rd_close(c);
		bench_daemon_stop(&d);
		if (n != sc->rss_regs || rss0 <= 0 || rss1 <= 0 || more < 0) {
			fprintf(stderr, "readyd-bench: rss: registered %ld of %d (%s)\n", n, sc->rss_regs,
				n < 0 ? strerror((int)-n) : more < 0 ? strerror((int)-more) : "refused");
			close(efd);
			return -EIO;
		}
		at_n[rep] = (double)(rss1 - rss0) * 1024.0 / (double)n;
		kern[rep] = (double)(slab1 - slab0) * 1024.0 / (double)n;
		at_lim[rep] = (double)(rss2 - rss0) * 1024.0 / (double)(n + more);
		lim_regs = n + more;
	}
	close(efd);
	struct bench_result *x = bench_add(run, "rss_per_registration", "B/registration", false, NULL);
	x->readyd = bench_median(at_n, nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "VmRSS growth at %d registrations, fresh daemon each repetition; not in it: kernel "
		 "memory (epoll items, fd table), about %.0f B/registration more (machine-wide slab "
		 "growth)", sc->rss_regs, bench_median(kern, nr));
	if (sc->rss_limit) {
		x = bench_add(run, "rss_per_registration_fd_limit", "B/registration", false, NULL);
		x->readyd = bench_median(at_lim, nr);
		x->reps = nr;
		snprintf(x->note, sizeof(x->note),
			 "at the fd limit: %ld registrations; RLIMIT_NOFILE is %llu (hard %llu) and cannot "
			 "be raised here; readyd keeps %u fds in reserve",
			 lim_regs, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
			 RDD_FD_RESERVE);
	}
	return 0;
}

static long ctx_switches(pid_t pid)
{
	char path[64], line[256];
	long v = -1, n;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
			v = n;
	fclose(f);
	return v;
}

int bench_idle(struct bench_run *run, struct bench_daemon *d)
{
	const struct bench_scale *sc = &run->o->sc;
	int nr = sc->reps < 64 ? sc->reps : 64;
	double pct[64];
	rd_client *c = NULL;
	uint64_t tok = 0;
	int daemon_fds = bench_count_fds(d->pid);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	int r = efd < 0 ? -errno : rd_open(&c, d->sock);
	long n = r < 0 ? r : register_dups(c, efd, sc->idle_regs, &tok);
	if (n != sc->idle_regs) {
		fprintf(stderr, "readyd-bench: idle: registered %ld of %d\n", n, sc->idle_regs);
		r = -EIO;
		goto out;
	}
	bench_sleep_ms(100);
	long cs0 = ctx_switches(d->pid);
	for (int rep = 0; rep < nr; rep++) {
		int64_t c0 = bench_cpu_ns(d->pid);
		uint64_t t0 = bench_now_ns();
		bench_sleep_ms(sc->idle_window_ms);
		int64_t c1 = bench_cpu_ns(d->pid);
		uint64_t t1 = bench_now_ns();
		if (c0 < 0 || c1 < 0) {
			r = -ESRCH;
			goto out;
		}
		pct[rep] = 100.0 * (double)(c1 - c0) / (double)(t1 - t0);
	}
	long cs1 = ctx_switches(d->pid);
	struct bench_result *x = bench_add(run, "idle_cpu", "%", false, NULL);
	x->readyd = bench_median(pct, nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note),
		 "daemon CPU time (all threads, ns clock) over %d ms windows with %d idle "
		 "registrations; %ld daemon wakeups in %d windows",
		 sc->idle_window_ms, sc->idle_regs, cs1 - cs0, nr);
	r = 0;
out:
	rd_close(c);
	if (efd >= 0)
		close(efd);
	bench_wait_fds(d->pid, daemon_fds, 5000);
	return r;
}
