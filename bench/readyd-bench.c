/* readyd-bench: readyd against its floor, in one run (issue 3). Starts its own readyd on
 * a temporary socket and its own baseline processes, runs every scenario a number of
 * repetitions, and prints the medians and the ratios as a table or as one JSON object.
 * See bench/README.md. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "../daemon/rdd.h"
#include "bench.h"

static const struct bench_scale scale_full = {
	.name = "full", .reps = 5, .chunks = 4,
	.notify_samples = 10000, .notify_warmup = 200,
	.tput_rounds = 40, .tput_regs = 10000, .tput_small = 1000, .tput_clients = 100,
	.handoff_iters = 100, .handoff_single = 2000,
	.rss_regs = 10000, .rss_limit = true,
	.idle_regs = 10000, .idle_window_ms = 10000,
	.accept_seq = 2000, .accept_tput = 8000,
};

static const struct bench_scale scale_quick = {
	.name = "quick", .reps = 5, .chunks = 2,
	.notify_samples = 2000, .notify_warmup = 100,
	.tput_rounds = 12, .tput_regs = 10000, .tput_small = 1000, .tput_clients = 100,
	.handoff_iters = 30, .handoff_single = 500,
	.rss_regs = 10000, .rss_limit = true,
	.idle_regs = 10000, .idle_window_ms = 1000,
	.accept_seq = 400, .accept_tput = 2000,
};

/* Asserts that everything works, not how fast: small sizes, few repetitions. */
static const struct bench_scale scale_smoke = {
	.name = "smoke", .reps = 5, .chunks = 1,
	.notify_samples = 100, .notify_warmup = 10,
	.tput_rounds = 2, .tput_regs = 1000, .tput_small = 100, .tput_clients = 100,
	.handoff_iters = 4, .handoff_single = 20,
	.rss_regs = 1000, .rss_limit = false,
	.idle_regs = 1000, .idle_window_ms = 20,
	.accept_seq = 20, .accept_tput = 100,
};

/* Issue 3's targets. */
enum target_kind { T_NONE, T_RATIO_LE, T_RATIO_GE, T_VALUE_LE, T_VALUE_LT };
static const struct {
	const char *name;
	enum target_kind kind;
	double v;
} targets[] = {
	{ "notify_rtt_p50", T_RATIO_LE, 1.10 },
	{ "notify_rtt_p99", T_RATIO_LE, 1.25 },
	{ "event_throughput", T_RATIO_GE, 0.8 },
	{ "event_throughput_100_clients", T_RATIO_GE, 0.8 },
	{ "handoff_rate", T_RATIO_GE, 0.8 },
	{ "rss_per_registration", T_VALUE_LE, 64 },
	{ "idle_cpu", T_VALUE_LT, 0.1 },
};

struct bench_result *bench_add(struct bench_run *run, const char *name, const char *unit,
			       bool higher_better, const char *baseline_name)
{
	static struct bench_result spare;
	struct bench_result *x = run->nres < BENCH_RESULTS_MAX ? &run->res[run->nres++] : &spare;
	*x = (struct bench_result){ .name = name, .unit = unit, .readyd = NAN, .baseline = NAN,
				    .baseline_name = baseline_name, .higher_better = higher_better };
	return x;
}

static double ratio_of(const struct bench_result *x)
{
	return isfinite(x->baseline) && x->baseline != 0 ? x->readyd / x->baseline : NAN;
}

/* Is the target met: 1, 0, or -1 when the row has none. */
static int target_met(const struct bench_result *x, char *desc, size_t len)
{
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		if (strcmp(targets[i].name, x->name) != 0)
			continue;
		double r = ratio_of(x), v = targets[i].v;
		switch (targets[i].kind) {
		case T_RATIO_LE:
			snprintf(desc, len, "ratio <= %.2f", v);
			return r <= v;
		case T_RATIO_GE:
			snprintf(desc, len, "ratio >= %.2f", v);
			return r >= v;
		case T_VALUE_LE:
			snprintf(desc, len, "<= %g %s", v, x->unit);
			return x->readyd <= v;
		case T_VALUE_LT:
			snprintf(desc, len, "< %g %s", v, x->unit);
			return x->readyd < v;
		default:
			break;
		}
	}
	snprintf(desc, len, "-");
	return -1;
}

/* Machine facts, read once. */
struct machine {
	char cpu[128];
	long cores;
	char kernel[160];
	unsigned long long nofile, nofile_hard;
	long mem_kib;
};

static void machine_read(struct machine *m)
{
	char line[512];
	struct utsname u;
	struct rlimit rl = { 0 };
	memset(m, 0, sizeof(*m));
	snprintf(m->cpu, sizeof(m->cpu), "unknown");
	FILE *f = fopen("/proc/cpuinfo", "r");
	while (f && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');
		if (strncmp(line, "model name", 10) == 0 && colon) {
			snprintf(m->cpu, sizeof(m->cpu), "%s", colon + 2);
			m->cpu[strcspn(m->cpu, "\n")] = '\0';
			break;
		}
	}
	if (f)
		fclose(f);
	f = fopen("/proc/meminfo", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %ld kB", &m->mem_kib) == 1)
			break;
	if (f)
		fclose(f);
	m->cores = sysconf(_SC_NPROCESSORS_ONLN);
	if (uname(&u) == 0)
		snprintf(m->kernel, sizeof(m->kernel), "%s %s", u.sysname, u.release);
	getrlimit(RLIMIT_NOFILE, &rl);
	m->nofile = (unsigned long long)rl.rlim_cur;
	m->nofile_hard = (unsigned long long)rl.rlim_max;
}

static void json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (; s && *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(out, "\\u%04x", ch);
		else
			fputc(ch, out);
	}
	fputc('"', out);
}

static void json_num(FILE *out, double v)
{
	if (isfinite(v))
		fprintf(out, "%.6g", v);
	else
		fputs("null", out);
}

static void print_json(const struct bench_run *run, const struct machine *m, double secs)
{
	FILE *out = stdout;
	fputs("{\"machine\": {\"cpu_model\": ", out);
	json_str(out, m->cpu);
	fprintf(out, ", \"cores\": %ld, \"kernel\": ", m->cores);
	json_str(out, m->kernel);
	fprintf(out, ", \"mem_total_kib\": %ld, \"rlimit_nofile\": %llu, \"rlimit_nofile_hard\": %llu, "
		     "\"readyd_fd_reserve\": %u, \"note\": ",
		m->mem_kib, m->nofile, m->nofile_hard, RDD_FD_RESERVE);
	json_str(out, "RLIMIT_NOFILE cannot be raised above its hard limit here; readyd keeps "
		      "its fd reserve free, so registrations stop short of the limit");
	fprintf(out, "},\n \"run\": {\"mode\": \"%s\", \"reps\": %d, \"seconds\": %.1f},\n \"scenarios\": [",
		run->o->sc.name, run->o->sc.reps, secs);
	for (int i = 0; i < run->nres; i++) {
		const struct bench_result *x = &run->res[i];
		char desc[64];
		int met = target_met(x, desc, sizeof(desc));
		fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", out);
		json_str(out, x->name);
		fputs(", \"unit\": ", out);
		json_str(out, x->unit);
		fputs(", \"readyd\": ", out);
		json_num(out, x->readyd);
		fputs(", \"baseline\": ", out);
		json_num(out, x->baseline);
		fputs(", \"baseline_name\": ", out);
		if (x->baseline_name)
			json_str(out, x->baseline_name);
		else
			fputs("null", out);
		fputs(", \"ratio\": ", out);
		json_num(out, ratio_of(x));
		fprintf(out, ", \"better\": \"%s\", \"reps\": %d", x->higher_better ? "higher" : "lower",
			x->reps);
		if (met >= 0) {
			fputs(", \"target\": ", out);
			json_str(out, desc);
			fprintf(out, ", \"met\": %s", met ? "true" : "false");
		}
		fputs(", \"note\": ", out);
		json_str(out, x->note);
		fputc('}', out);
	}
	fputs("\n]}\n", out);
}

static const char *fmt_num(char *buf, size_t len, double v)
{
	if (!isfinite(v))
		snprintf(buf, len, "-");
	else if (fabs(v) >= 100000)
		snprintf(buf, len, "%.0f", v);
	else if (fabs(v) >= 100)
		snprintf(buf, len, "%.1f", v);
	else
		snprintf(buf, len, "%.3g", v);
	return buf;
}

static void print_table(const struct bench_run *run, const struct machine *m, double secs)
{
	printf("readyd-bench: %s run, median of %d repetitions, %.0f s\n", run->o->sc.name,
	       run->o->sc.reps, secs);
	printf("machine: %s, %ld cores, %s, RLIMIT_NOFILE %llu (hard %llu, cannot be raised; "
	       "readyd keeps %u in reserve)\n\n",
	       m->cpu, m->cores, m->kernel, m->nofile, m->nofile_hard, RDD_FD_RESERVE);
	int wn = 30; /* the name column fits the longest name */
	for (int i = 0; i < run->nres; i++)
		if ((int)strlen(run->res[i].name) > wn)
			wn = (int)strlen(run->res[i].name);
	printf("%-*s %-15s %12s %12s %7s  %-7s %-18s %s\n", wn, "scenario", "unit", "readyd",
	       "baseline", "ratio", "better", "target", "baseline name");
	for (int i = 0; i < run->nres; i++) {
		const struct bench_result *x = &run->res[i];
		char a[32], b[32], r[32], desc[64];
		int met = target_met(x, desc, sizeof(desc));
		double ratio = ratio_of(x);
		if (isfinite(ratio))
			snprintf(r, sizeof(r), "%.3f", ratio);
		else
			snprintf(r, sizeof(r), "-");
		if (met >= 0)
			snprintf(desc + strlen(desc), sizeof(desc) - strlen(desc), " %s", met ? "ok" : "MISS");
		printf("%-*s %-15s %12s %12s %7s  %-7s %-18s %s\n", wn, x->name, x->unit,
		       fmt_num(a, sizeof(a), x->readyd), fmt_num(b, sizeof(b), x->baseline), r,
		       x->higher_better ? "higher" : "lower", desc, x->baseline_name ? x->baseline_name : "-");
	}
	printf("\n");
	for (int i = 0; i < run->nres; i++)
		if (run->res[i].note[0])
			printf("  %s: %s\n", run->res[i].name, run->res[i].note);
}

/* --smoke: every scenario produced a finite positive number (idle_cpu may be 0: an
 * idle daemon may use no CPU at all), and so did every baseline it has. */
static int smoke_check(const struct bench_run *run)
{
	static const char *const want[] = {
		"notify_rtt_p50", "notify_rtt_p99", "notify_rtt_direct_p50", "event_throughput",
		"event_throughput_100_clients", "handoff_rate", "rss_per_registration", "idle_cpu",
		"accept_wakeups_per_connection", "accept_wakeups_per_connection_exclusive",
		"accept_throughput",
	};
	int bad = 0;
	for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
		const struct bench_result *x = NULL;
		for (int i = 0; i < run->nres; i++)
			if (strcmp(run->res[i].name, want[w]) == 0)
				x = &run->res[i];
		bool zero_ok = strcmp(want[w], "idle_cpu") == 0;
		if (!x) {
			fprintf(stderr, "readyd-bench: smoke: %s: no result\n", want[w]);
			bad++;
		} else if (!isfinite(x->readyd) || x->readyd < 0 || (!zero_ok && x->readyd == 0) ||
			   (x->baseline_name && (!isfinite(x->baseline) || x->baseline <= 0))) {
			fprintf(stderr, "readyd-bench: smoke: %s: readyd %g, baseline %g\n", x->name,
				x->readyd, x->baseline);
			bad++;
		}
	}
	if (bad == 0)
		fprintf(stderr, "readyd-bench: smoke ok: %d scenarios produced finite positive numbers\n",
			run->nres);
	return bad ? 1 : 0;
}

static bool wanted(const struct bench_opts *o, const char *group)
{
	if (!o->only)
		return true;
	size_t n = strlen(group);
	for (const char *p = o->only; *p;) {
		size_t l = strcspn(p, ",");
		if (l == n && strncmp(p, group, n) == 0)
			return true;
		p += l + (p[l] == ',');
	}
	return false;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: readyd-bench [OPTION]...\n"
		"Measure readyd against a bare relay and bare epoll, in one run (see bench/README.md).\n"
		"\n"
		"  --readyd PATH     the daemon to start (default build/bin/readyd)\n"
		"  --json            print one JSON object instead of the table\n"
		"  --quick           smaller run (under 30 s)\n"
		"  --smoke           about a second: assert that every scenario works, not how fast\n"
		"  --reps N          repetitions of each scenario (default 5, at least 5 unless --smoke)\n"
		"  --only LIST       scenario groups, comma-separated: notify, throughput,\n"
		"                    throughput100, handoff, accept, rss, idle\n"
		"  --plot-data FILE  write the notify latency samples (CDF per mode) to FILE\n"
		"  --verbose         every repetition's numbers on stderr\n"
		"\n"
		"Profiling (one fixed load, no table):\n"
		"  --profile LOAD    throughput, throughput100, notify, notify-relay, notify-direct\n"
		"                    or handoff\n"
		"  --count N         rounds (throughput), round trips (notify) or ADD+DEL of 253\n"
		"                    (handoff); 0: setup only. Prints the events (fds) handled\n"
		"  --daemon-wrap CMD prefix the daemon's command line (e.g. valgrind --tool=callgrind ...)\n"
		"  --attach CMD      run CMD ({pid} = the daemon's pid) for the whole load, then SIGINT it\n");
}

static void on_signal(int sig)
{
	static const char msg[] = "readyd-bench: stopped by a signal\n";
	if (write(2, msg, sizeof(msg) - 1) < 0)
		sig = SIGTERM;
	bench_stop_all();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int run_profile(struct bench_opts *o)
{
	struct bench_daemon d;
	pid_t att = 0;
	long ev;
	int r = bench_daemon_start(&d, o->readyd, o->wrap);
	if (r < 0) {
		fprintf(stderr, "readyd-bench: starting %s: %s\n", o->readyd, strerror(-r));
		return 1;
	}
	if (o->attach) {
		att = bench_spawn_cmd(o->attach, d.pid);
		bench_sleep_ms(1000); /* let perf or strace attach */
	}
	if (strcmp(o->profile, "notify") == 0)
		ev = bench_profile_notify(o, &d, o->profile_count, "readyd");
	else if (strncmp(o->profile, "notify-", 7) == 0) /* the baselines, to compare */
		ev = bench_profile_notify(o, &d, o->profile_count, o->profile + 7);
	else if (strcmp(o->profile, "throughput") == 0)
		ev = bench_profile_throughput(o, &d, 1, o->profile_count);
	else if (strcmp(o->profile, "handoff") == 0)
		ev = bench_profile_handoff(o, &d, o->profile_count);
	else if (strcmp(o->profile, "throughput100") == 0)
		ev = bench_profile_throughput(o, &d, o->sc.tput_clients, o->profile_count);
	else
		ev = -EINVAL;
	if (att > 0) {
		bench_sleep_ms(200);
		bench_stop_pid(att, SIGINT);
	}
	pid_t dpid = d.pid;
	bench_daemon_stop(&d);
	if (ev < 0) {
		fprintf(stderr, "readyd-bench: profile %s: %s\n", o->profile, strerror((int)-ev));
		return 1;
	}
	printf("profile %s count %ld events_delivered %ld daemon_pid %d\n", o->profile,
	       o->profile_count, ev, (int)dpid);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "readyd", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "smoke", no_argument, NULL, 's' },
		{ "reps", required_argument, NULL, 'n' },
		{ "only", required_argument, NULL, 'o' },
		{ "plot-data", required_argument, NULL, 'p' },
		{ "profile", required_argument, NULL, 'P' },
		{ "count", required_argument, NULL, 'c' },
		{ "daemon-wrap", required_argument, NULL, 'w' },
		{ "attach", required_argument, NULL, 'a' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bench_opts o = { .readyd = "build/bin/readyd", .sc = scale_full };
	int reps = 0, ch;

	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'r':
			o.readyd = optarg;
			break;
		case 'j':
			o.json = true;
			break;
		case 'q':
			o.sc = scale_quick;
			break;
		case 's':
			o.smoke = true;
			o.sc = scale_smoke;
			break;
		case 'n':
			reps = atoi(optarg);
			break;
		case 'o':
			o.only = optarg;
			break;
		case 'p':
			o.plot_data = optarg;
			break;
		case 'P':
			o.profile = optarg;
			break;
		case 'c':
			o.profile_count = atol(optarg);
			break;
		case 'w':
			o.wrap = optarg;
			break;
		case 'a':
			o.attach = optarg;
			break;
		case 'v':
			bench_verbose = true;
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
	if (reps) {
		if (reps > 64 || (reps < BENCH_REPS_MIN && !o.smoke)) {
			fprintf(stderr, "readyd-bench: --reps: %d to 64\n", BENCH_REPS_MIN);
			return 2;
		}
		o.sc.reps = reps;
	}
	if (access(o.readyd, X_OK) < 0) {
		fprintf(stderr, "readyd-bench: %s: %s (build it, or pass --readyd)\n", o.readyd,
			strerror(errno));
		return 2;
	}
	/* The benchmark's processes hold many fds: use the whole limit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	atexit(bench_stop_all);

	/* Full runs take about a minute, --quick some seconds; far beyond that, something
	 * hangs: stop rather than wait forever. */
	bench_watchdog(o.profile ? 1800 : o.smoke ? 60 : o.sc.idle_window_ms >= 10000 ? 600 : 180);
	if (o.profile)
		return run_profile(&o);

	struct machine m;
	machine_read(&m);
	struct bench_run run = { .o = &o };
	struct bench_daemon d;
	uint64_t t0 = bench_now_ns();
	int r = bench_daemon_start(&d, o.readyd, NULL);
	if (r < 0) {
		fprintf(stderr, "readyd-bench: starting %s: %s\n", o.readyd, strerror(-r));
		return 1;
	}
	int failed = 0;
	if (wanted(&o, "notify") && bench_notify(&run, &d) < 0)
		failed++;
	if (wanted(&o, "throughput") && bench_throughput(&run, &d, 1) < 0)
		failed++;
	if (wanted(&o, "throughput100") && bench_throughput(&run, &d, o.sc.tput_clients) < 0)
		failed++;
	if (wanted(&o, "handoff") && bench_handoff(&run, &d) < 0)
		failed++;
	if (wanted(&o, "accept") && bench_accept(&run, &d) < 0)
		failed++;
	if (wanted(&o, "rss") && bench_rss(&run) < 0)
		failed++;
	if (wanted(&o, "idle") && bench_idle(&run, &d) < 0)
		failed++;
	bench_daemon_stop(&d);
	double secs = (double)(bench_now_ns() - t0) / 1e9;

	if (o.json)
		print_json(&run, &m, secs);
	else
		print_table(&run, &m, secs);
	fflush(stdout);
	if (failed)
		fprintf(stderr, "readyd-bench: %d scenario group%s failed\n", failed, failed > 1 ? "s" : "");
	if (o.smoke)
		return smoke_check(&run) || failed ? 1 : 0;
	return failed ? 1 : 0;
}
