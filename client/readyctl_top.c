/* readyctl top: readyd's clients sorted by event rate under the daemon's totals, refreshed
 * every second, in the spirit of systemd-cgtop. The rates are differences between two
 * polls of the control plane's status and clients commands. On a terminal it redraws in
 * place and reads keys in raw mode; elsewhere it prints plain snapshots. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "readyctl.h"

/* One client as one refresh shows it. */
struct top_row {
	long long id, pid, uid, regs, queued, delivered;
	double rate; /* events delivered per second since the last refresh; < 0: not known yet */
	char comm[16];
};

/* What the next refresh keeps of a client, to compute its rate. */
struct top_prev {
	long long id, delivered;
};

struct top {
	rd_client *c;
	const struct top_opts *o;
	bool tty_out;
	bool first;
	/* The previous refresh: when, the daemon's total, and every client shown. */
	bool have_prev;
	uint64_t prev_usec;
	long long prev_total;
	struct top_prev *prev;
	size_t nprev;
};

/* The lines of one frame: on a terminal, cut to its width and to its height less one
 * row, so that nothing scrolls. */
struct screen {
	bool tty;
	int rows, cols, used;
};

/* The terminal as it was, for the signal handlers as much as for the normal exit. */
static struct termios saved_tio;
static volatile sig_atomic_t want_raw, raw_on, resumed;

static void raw_enter(void)
{
	struct termios t = saved_tio;
	t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0)
		raw_on = 1;
}

static void raw_leave(void)
{
	if (raw_on) {
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
		raw_on = 0;
	}
}

/* Die of sig, or stop on it, as if it were not handled: with the handler's block on it
 * lifted, raise it under the default action. Async-signal-safe. */
static void raise_default(int sig)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	signal(sig, SIG_DFL);
	sigprocmask(SIG_UNBLOCK, &s, NULL);
	raise(sig);
}

static void on_signal(int sig);

static void handle(int sig)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

/* SIGINT, SIGTERM, SIGHUP: give the terminal back and die of the signal. SIGTSTP: give it
 * back and stop. SIGCONT: take it again and redraw. No SA_RESTART, so that a wait for a
 * key returns at once. */
static void on_signal(int sig)
{
	int saved_errno = errno;
	if (sig == SIGCONT) {
		if (want_raw)
			raw_enter();
		resumed = 1;
	} else {
		raw_leave();
		raise_default(sig);
		/* Only SIGTSTP returns here, once continued. */
		handle(sig);
		if (want_raw && !raw_on)
			raw_enter();
		resumed = 1;
	}
	errno = saved_errno;
}

static uint64_t now_usec(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static long long num(json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

static int by_id(const void *a, const void *b)
{
	const struct top_prev *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Fastest first; before rates are known, most delivered first; then by id. */
static int by_rate(const void *a, const void *b)
{
	const struct top_row *x = a, *y = b;
	if (x->rate != y->rate)
		return x->rate > y->rate ? -1 : 1;
	if (x->delivered != y->delivered)
		return x->delivered > y->delivered ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void put_line(struct screen *s, bool reverse, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void put_line(struct screen *s, bool reverse, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (!s->tty) {
		printf("%s\n", buf);
		return;
	}
	if (s->used >= s->rows - 1)
		return;
	s->used++;
	if (reverse)
		printf("\033[7m%-*.*s\033[0m\n", s->cols, s->cols, buf);
	else
		printf("%.*s\n", s->cols, buf);
}

static void format_rate(char *buf, size_t cap, double rate)
{
	if (rate < 0)
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.1f", rate);
}

static void render_table(struct top *t, json_t *status, const struct top_row *rows, size_t n,
			 double total_rate)
{
	struct screen s = { .tty = t->tty_out, .rows = 24, .cols = 80 };
	if (s.tty) {
		struct winsize ws;
		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
			s.rows = ws.ws_row;
			s.cols = ws.ws_col;
		}
		fputs("\033[H\033[2J", stdout);
	} else if (!t->first) {
		putchar('\n');
	}

	long long up = num(status, "uptime_usec") / 1000000;
	char upbuf[48], clock[16], rate[32];
	if (up >= 86400)
		snprintf(upbuf, sizeof(upbuf), "%lldd %02lldh %02lldm %02llds", up / 86400,
			 up % 86400 / 3600, up % 3600 / 60, up % 60);
	else
		snprintf(upbuf, sizeof(upbuf), "%02lldh %02lldm %02llds", up / 3600, up % 3600 / 60,
			 up % 60);
	time_t now = time(NULL);
	struct tm tm;
	strftime(clock, sizeof(clock), "%H:%M:%S", localtime_r(&now, &tm));
	const char *version = json_string_value(json_object_get(status, "version"));
	put_line(&s, false, "readyd %s, pid %lld, up %s, at %s", version ? version : "?",
		 num(status, "pid"), upbuf, clock);
	format_rate(rate, sizeof(rate), total_rate);
	put_line(&s, false, "clients: %lld  registrations: %lld  events/s: %s  delivered: %lld",
		 num(status, "clients"), num(status, "registrations"), rate,
		 num(status, "events_delivered"));
	put_line(&s, false, "%s", "");
	put_line(&s, true, "%6s %8s %6s %-15s %8s %8s %10s %12s", "ID", "PID", "UID", "COMMAND",
		 "REGS", "QUEUED", "EVENTS/S", "DELIVERED");
	for (size_t i = 0; i < n; i++) {
		const struct top_row *r = &rows[i];
		format_rate(rate, sizeof(rate), r->rate);
		put_line(&s, false, "%6lld %8lld %6lld %-15s %8lld %8lld %10s %12lld", r->id, r->pid,
			 r->uid, r->comm, r->regs, r->queued, rate, r->delivered);
	}
	if (n == 0)
		put_line(&s, false, "%s", "(no clients but this readyctl)");
}

/* Rates to the thousandth: finer is noise. */
static json_t *rate_json(double rate)
{
	return rate < 0 ? json_null() : json_real((double)(long long)(rate * 1000 + 0.5) / 1000);
}

/* One object a line: the totals, and "top", the clients in the table's order. */
static int render_json(json_t *status, const struct top_row *rows, size_t n, double total_rate)
{
	json_t *arr = json_array();
	for (size_t i = 0; arr && i < n; i++) {
		const struct top_row *r = &rows[i];
		json_t *o = json_pack("{s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:o}", "id",
				      (json_int_t)r->id, "pid", (json_int_t)r->pid, "uid",
				      (json_int_t)r->uid, "comm", r->comm, "registrations",
				      (json_int_t)r->regs, "queued_events", (json_int_t)r->queued,
				      "events_delivered", (json_int_t)r->delivered, "events_per_sec",
				      rate_json(r->rate));
		if (!o || json_array_append_new(arr, o) < 0) {
			json_decref(arr);
			arr = NULL;
		}
	}
	json_t *j = arr ? json_pack("{s:I, s:I, s:I, s:I, s:o, s:o}", "time_usec",
				    (json_int_t)now_usec(CLOCK_REALTIME), "clients",
				    (json_int_t)num(status, "clients"), "registrations",
				    (json_int_t)num(status, "registrations"), "events_delivered",
				    (json_int_t)num(status, "events_delivered"), "events_per_sec",
				    rate_json(total_rate), "top", arr)
			: NULL;
	char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
	json_decref(j);
	if (!text)
		return -ENOMEM;
	printf("%s\n", text);
	free(text);
	return 0;
}

/* Poll the daemon, compute the rates against the previous poll, and print a frame. */
static int refresh(struct top *t)
{
	uint64_t at = now_usec(CLOCK_MONOTONIC);
	int rc = EXIT_OK;
	json_t *status = readyctl_ask(t->c, json_pack("{s:s}", "command", "status"), false, &rc);
	json_t *clients = status ? readyctl_clients(t->c, false, &rc) : NULL;
	if (!clients) {
		json_decref(status);
		return EXIT_FAIL;
	}
	json_t *list = json_object_get(clients, "clients");
	size_t cap = json_array_size(list), n = 0;
	struct top_row *rows = calloc(cap ? cap : 1, sizeof(*rows));
	struct top_prev *next = calloc(cap ? cap : 1, sizeof(*next));
	if (!rows || !next) {
		free(rows);
		free(next);
		json_decref(status);
		json_decref(clients);
		fprintf(stderr, "readyctl: %s\n", strerror(ENOMEM));
		return EXIT_FAIL;
	}

	double secs = t->have_prev ? (double)(at - t->prev_usec) / 1e6 : 0;
	bool rates = t->have_prev && secs > 0;
	long long total = num(status, "events_delivered");
	double total_rate = rates ? (double)(total - t->prev_total) / secs : -1;
	if (rates && total_rate < 0)
		total_rate = 0;
	size_t i;
	json_t *c;
	json_array_foreach(list, i, c) {
		/* This readyctl's own connection is counted in the totals, not listed. */
		if (json_is_true(json_object_get(c, "self")))
			continue;
		struct top_row *r = &rows[n];
		r->id = num(c, "id");
		r->pid = num(c, "pid");
		r->uid = num(c, "uid");
		r->regs = num(c, "registrations");
		r->queued = num(c, "queued_events");
		r->delivered = num(c, "events_delivered");
		readyctl_printable(r->comm, sizeof(r->comm),
				   json_string_value(json_object_get(c, "comm")));
		r->rate = -1;
		if (rates) {
			/* A client new since the last poll delivered all it has since then. */
			struct top_prev key = { .id = r->id }, *p;
			p = bsearch(&key, t->prev, t->nprev, sizeof(*t->prev), by_id);
			long long d = r->delivered - (p ? p->delivered : 0);
			r->rate = d > 0 ? (double)d / secs : 0;
		}
		next[n] = (struct top_prev){ .id = r->id, .delivered = r->delivered };
		n++;
	}
	qsort(rows, n, sizeof(*rows), by_rate);
	qsort(next, n, sizeof(*next), by_id);

	rc = EXIT_OK;
	if (t->o->json) {
		if (render_json(status, rows, n, total_rate) < 0)
			rc = EXIT_FAIL;
	} else {
		render_table(t, status, rows, n, total_rate);
	}
	t->first = false;
	free(t->prev);
	t->prev = next;
	t->nprev = n;
	t->prev_usec = at;
	t->prev_total = total;
	t->have_prev = true;
	free(rows);
	json_decref(status);
	json_decref(clients);
	return rc;
}

/* Wait for the next refresh: until the deadline, a space (refresh now) or q (quit, 1).
 * Keys are read only when stdin is a terminal; 'keys' goes false if it stops being one. */
static int wait_next(uint64_t deadline, bool *keys)
{
	for (;;) {
		if (resumed) {
			resumed = 0;
			return 0;
		}
		uint64_t now = now_usec(CLOCK_MONOTONIC);
		if (now >= deadline)
			return 0;
		int ms = (int)((deadline - now + 999) / 1000);
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		int r = poll(&p, *keys ? 1 : 0, ms);
		if (r < 0 && errno != EINTR)
			return 0;
		if (r <= 0)
			continue;
		char buf[64];
		ssize_t got = read(STDIN_FILENO, buf, sizeof(buf));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			*keys = false; /* the terminal went away */
			continue;
		}
		for (ssize_t k = 0; k < got; k++) {
			if (buf[k] == 'q' || buf[k] == 'Q')
				return 1;
			if (buf[k] == ' ')
				return 0;
		}
	}
}

int readyctl_top(rd_client *c, const struct top_opts *o)
{
	static char obuf[1 << 16];
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGTSTP, SIGCONT };
	struct top t = { .c = c, .o = o, .tty_out = !o->json && isatty(STDOUT_FILENO), .first = true };
	bool keys = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_tio) == 0;
	int rc = EXIT_OK;

	/* A frame goes out in one write; a reader that went away is an end, not a signal. */
	setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	signal(SIGPIPE, SIG_IGN);
	if (keys) {
		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
			handle(sigs[i]);
		want_raw = 1;
		raw_enter();
	}
	for (long done = 0;;) {
		uint64_t start = now_usec(CLOCK_MONOTONIC);
		rc = refresh(&t);
		if (fflush(stdout) != 0 && rc == EXIT_OK) {
			if (errno != EPIPE) {
				fprintf(stderr, "readyctl: standard output: %s\n", strerror(errno));
				rc = EXIT_FAIL;
			}
			break;
		}
		if (rc != EXIT_OK || (o->iterations && ++done >= o->iterations))
			break;
		if (wait_next(start + (uint64_t)(o->delay * 1e6), &keys))
			break;
	}
	want_raw = 0;
	raw_leave();
	free(t.prev);
	return rc;
}
