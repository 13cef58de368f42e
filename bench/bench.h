/* readyd-bench: readyd against its floor, in one run. Shared declarations of the
 * benchmark's modules: process control (proc.c), the bare relay (relay.c) and the
 * scenarios (notify.c, throughput.c, handoff.c, footprint.c, accept.c). */
#ifndef READYD_BENCH_H
#define READYD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define BENCH_REPS_MIN 5
#define BENCH_CHILD_MAX_S 1800 /* no process the benchmark forks lives longer */

/* How much work each scenario does: full, --quick or --smoke. */
struct bench_scale {
	const char *name;
	int reps;
	int chunks;              /* phases of each mode per repetition, alternating */
	int notify_samples;      /* round trips per repetition and mode */
	int notify_warmup;
	int tput_rounds;         /* rounds (1,000 then 10,000 ready) per repetition */
	int tput_regs;           /* registrations made ready in a large round */
	int tput_small;          /* ... in a small round */
	int tput_clients;        /* clients of the many-clients scenario */
	int handoff_iters;       /* ADD 253 + DEL 253 per repetition */
	int handoff_single;      /* single ADD + DEL per repetition */
	int rss_regs;            /* registrations for the first RSS point */
	bool rss_limit;          /* also fill to the fd limit */
	int idle_regs;
	int idle_window_ms;
	int accept_seq;          /* connections one at a time, per repetition and mode */
	int accept_tput;         /* connections of the throughput scenario, likewise */
};

struct bench_opts {
	const char *readyd;      /* daemon binary */
	const char *wrap;        /* command prefix for the daemon (valgrind ...), or NULL */
	const char *attach;      /* command run around a profile load, {pid} = daemon, or NULL */
	const char *plot_data;   /* notify samples go here, or NULL */
	const char *only;        /* comma-separated scenario groups, or NULL for all */
	const char *profile;     /* profile load: throughput, throughput100, notify, handoff */
	long profile_count;      /* rounds or round trips of the profile load */
	bool json;
	bool smoke;
	struct bench_scale sc;
};

/* One row of the results. */
struct bench_result {
	const char *name;
	const char *unit;
	double readyd;
	double baseline;         /* NAN when there is none */
	const char *baseline_name;
	bool higher_better;
	int reps;
	char note[320];
};

#define BENCH_RESULTS_MAX 16

struct bench_run {
	struct bench_opts *o;
	struct bench_result res[BENCH_RESULTS_MAX];
	int nres;
};

struct bench_result *bench_add(struct bench_run *run, const char *name, const char *unit,
			       bool higher_better, const char *baseline_name);

/* A readyd started for the benchmark, on a socket in a fresh temporary directory. */
struct bench_daemon {
	pid_t pid;
	char dir[64];
	char sock[108];
};

/* proc.c: processes, clocks and /proc readings. */
int bench_daemon_start(struct bench_daemon *d, const char *bin, const char *wrap);
void bench_daemon_stop(struct bench_daemon *d);
/* Fork a child that runs fn(arg) and exits with its return value. The child dies with
 * the benchmark (PR_SET_PDEATHSIG). Returns the pid or -errno. */
pid_t bench_fork(int (*fn)(void *), void *arg);
/* A process that SIGTERMs the benchmark after 'seconds': every run is bounded. */
pid_t bench_watchdog(int seconds);
/* SIGKILL (sig = 0) or 'sig' a process the benchmark started, and reap it, bounded. */
int bench_stop_pid(pid_t pid, int sig);
/* Stop every child still recorded (at exit, or after a failure). */
void bench_stop_all(void);
/* Wait up to timeout_ms for one byte on fd; returns the byte (0..255) or -errno. */
int bench_wait_byte(int fd, int timeout_ms);
/* Send one status byte (0 = ready) on fd. */
void bench_say(int fd, int status);
/* Read and discard whatever is waiting on fd without blocking. */
void bench_drain(int fd);
uint64_t bench_now_ns(void);
void bench_sleep_ms(int ms);
long bench_rss_kib(pid_t pid);
/* CPU time of a process (all threads), in ns; -errno on failure. */
int64_t bench_cpu_ns(pid_t pid);
/* Voluntary context switches of a process (the times it slept); -errno on failure. */
long bench_ctxt_switches(pid_t pid);
int bench_count_fds(pid_t pid);
/* Wait, bounded by timeout_ms, until pid holds at most 'want' fds; returns the count. */
int bench_wait_fds(pid_t pid, int want, int timeout_ms);
/* Run a shell-less command line (split on spaces) with {pid} replaced; returns its pid. */
pid_t bench_spawn_cmd(const char *cmdline, pid_t pid);

/* --verbose: every repetition's numbers on stderr. */
extern bool bench_verbose;

double bench_median(double *v, int n);
/* The q-quantile (0..1) of v, which it sorts. */
double bench_quantile(double *v, int n, double q);

/* relay.c: the bare relay. It watches fds edge-triggered on its own epoll, whose
 * epoll_data is (client index << 32 | token), and forwards one 16-byte record per event
 * (token, tick, ready: readyd's EVENTS record) to that client's SEQPACKET socket, all
 * records of one epoll_wait and one client in one packet. Runs until killed. */
struct relay_cfg {
	int epfd;
	const int *socks;
	int nsocks;
	int ready_fd; /* told 0 once the loop starts */
};
int relay_run(void *cfg);
/* Add fd to epfd edge-triggered for EPOLLIN, naming (client, token). 0 or -errno. */
int relay_watch(int epfd, int fd, uint32_t client, uint32_t token);

/* Scenarios. Each returns 0, or -errno after printing why. */
int bench_notify(struct bench_run *run, struct bench_daemon *d);
int bench_throughput(struct bench_run *run, struct bench_daemon *d, int nclients);
int bench_handoff(struct bench_run *run, struct bench_daemon *d);
int bench_rss(struct bench_run *run);
int bench_idle(struct bench_run *run, struct bench_daemon *d);
int bench_accept(struct bench_run *run, struct bench_daemon *d);

/* Profile loads: a fixed amount of work against d, for callgrind and perf (--profile).
 * Returns the number of events delivered, or -errno. */
long bench_profile_throughput(struct bench_opts *o, struct bench_daemon *d, int nclients,
			      long rounds);
long bench_profile_notify(struct bench_opts *o, struct bench_daemon *d, long trips, const char *mode);
/* 'iters' times: ADD 253, DEL 253; returns the fds registered. */
long bench_profile_handoff(struct bench_opts *o, struct bench_daemon *d, long iters);

#endif
