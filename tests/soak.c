/* soak: readyd under sustained load, checked by an oracle (issue 6, section 5; run by
 * `make soak SOAK_SECONDS=N`). 200 clients, one thread and one connection each, churn
 * add, delete, modify and re-arm at full rate on their own pipes, eventfds and
 * socketpairs, while writer threads keep making those fds ready. Each client checks the
 * guarantees of libreadyd(3) on every event, and after each round a quiescent drain
 * checks that no wakeup was lost; now and then a client drops its connection, with its
 * registrations, and opens another. Then a phase of connect/HELLO/close cycles. At the end
 * the daemon is back at its idle fd count, its RSS is flat, and it exits 0 on SIGTERM.
 * Prints a summary; exit status 0 only when no violation was seen. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "harness.h"

#define NCLIENTS 200
#define NSLOTS 8                 /* fds per client: ~14 of ours, 8 in the daemon */
#define NSTEADY 2                /* of which the last ones are left alone by the churn */
#define NCHURN (NSLOTS - NSTEADY)
#define NWRITERS 2               /* each owns NCLIENTS / NWRITERS clients */
#define NCYCLERS 4               /* threads doing connect/HELLO/close */
#define CYCLES_TARGET 1000000L   /* "a million connect/close cycles" */
#define ROUND_MS 2000            /* churn per round, before the drain */
#define CHURN_SHARE 75           /* percent of the time for churn; the rest for cycles */
#define EVENTS_MAX 64
#define READS_PER_EVENT 256      /* reads before an fd is left for the next turn */
#define QUIET_MS 100             /* no event for this long: the drain is over */
#define PATIENCE_QUIET_MS 2000   /* then, for a slot not settled: a slow daemon is not */
#define PATIENCE_MS 10000        /* a lost wakeup, so this much longer, and quieter */
#define RSS_TOLERANCE_KIB 1024
#define DETAILS_MAX 40           /* violations printed in full; all are counted */

#define INTEREST_MASK (RD_READABLE | RD_WRITABLE | RD_PRIORITY)
#define ALWAYS_BITS (RD_READ_CLOSED | RD_WRITE_CLOSED | RD_ERROR)
#define TOKEN_SEQ_BITS 40

enum violation {
	V_LOST,          /* data or writability never reported */
	V_AFTER_DELETE,  /* an event for a token whose delete had returned */
	V_UNKNOWN_TOKEN, /* a token this connection never added */
	V_INTEREST,      /* readiness outside the interest in force */
	V_ONESHOT,       /* a oneshot event while disarmed */
	V_ONESHOT_EDGE,  /* the same, after a modify from edge to oneshot */
	V_TICK,          /* tick 0, or not increasing */
	V_BITS,          /* closed/error bits, or an empty event, on fds that are neither */
	V_CALL,          /* a call failed that should not have */
	V_IO,            /* our own fd misbehaved (EOF, an error) */
	V_CYCLE,         /* a connect/HELLO/close cycle failed */
	V_FDS,           /* the daemon's fd count is not what it should be */
	V_RSS,           /* the daemon's RSS grew */
	V_EXIT,          /* the daemon did not exit 0 on SIGTERM */
	V_COUNT
};

static const char *const violation_name[V_COUNT] = {
	[V_LOST] = "lost wakeup",
	[V_AFTER_DELETE] = "event after delete",
	[V_UNKNOWN_TOKEN] = "unknown token",
	[V_INTEREST] = "event outside interest",
	[V_ONESHOT] = "oneshot event while disarmed",
	[V_ONESHOT_EDGE] = "2 events for 1 edge->oneshot modify",
	[V_TICK] = "tick not increasing",
	[V_BITS] = "unexpected ready bits",
	[V_CALL] = "failed call",
	[V_IO] = "fd error",
	[V_CYCLE] = "failed connect cycle",
	[V_FDS] = "daemon fd count",
	[V_RSS] = "daemon RSS growth",
	[V_EXIT] = "daemon exit status",
};

/* The oracle. Each client keeps a model of its registrations and checks every event:
 * - tokens are never reused in a run ((client + 1) << 40 | a sequence number), so an
 *   event for a token that is not registered now came after its delete's reply;
 * - an event's interest bits lie within the interest of the last add or modify;
 * - a oneshot registration is armed (add, modify, rearm) only once the event of its
 *   last arm has been taken: each arm allows one event, and a second one is a fault;
 * - ticks grow, per registration.
 * No lost wakeup: after each READABLE event the client reads until EAGAIN and counts
 * what it read; the writers count what they wrote. At the end of each round the writers
 * stop and the clients drain until quiet: every slot then watched (registered,
 * READABLE in its interest, armed) must have read all that was written, as readiness
 * that came while it was watched was reported, and so was readiness already there when
 * it became watched (add, modify and rearm report an fd that is ready). Then every slot
 * is made watched, and after another drain every byte ever written must have been read.
 * Readiness that arrives while data is unread may coalesce into one event; reading
 * until EAGAIN makes that harmless, and the counts, not the events, are compared. */

enum kind { K_PIPE, K_EVENTFD, K_SOCKET };
static const char *const kind_name[] = { "pipe", "eventfd", "socketpair" };

/* One of a client's fds. The client owns everything but 'written', which the writer
 * that owns the client updates during a round; the two meet only at round barriers,
 * and through 'acked' for a steady slot.
 *
 * The churn re-polls a slot at every add, modify and re-arm, and the next write makes
 * it ready again, so a wakeup lost on a churned slot is mostly healed before the drain
 * can see it. Steady slots are not churned during a round and are written ping-pong:
 * the writer writes again only once the client has read everything (acked == written).
 * A wakeup lost there stalls the slot until the drain, which reports it, certainly. */
struct slot {
	enum kind kind;
	bool steady;
	int rfd;            /* the registered end, read by the client */
	int wfd;            /* the end the writer writes (rfd itself for an eventfd) */
	uint64_t token;     /* 0: not registered */
	uint32_t interest;
	uint32_t flags;
	int credit;         /* oneshot: events allowed before the next arm (0 or 1) */
	bool from_edge;     /* modified from edge to oneshot since its add */
	bool seen;          /* an event came since the add: last_tick is valid */
	uint32_t last_tick;
	bool owe_read;      /* a read stopped at READS_PER_EVENT: go on before waiting */
	uint64_t consumed;  /* bytes (eventfd: counts) read by the client */
	uint64_t written;   /* bytes (eventfd: counts) written by the writer */
	_Atomic uint64_t acked; /* 'consumed', published for the writer */
};

struct stats {
	uint64_t add, del, mod, rearm;  /* entries, single and batched */
	uint64_t batches;               /* batched calls */
	uint64_t reconnects;            /* rd_close with registrations, then rd_open */
	uint64_t events, readable, writable;
	uint64_t consumed;
	uint64_t writes, steady_writes;
};

struct client {
	int id;
	rd_client *c;
	bool dead;          /* its connection failed: it sits the rest out */
	uint64_t next_seq;
	uint64_t rng;
	struct slot s[NSLOTS];
	struct stats st;
	struct rd_event ev[EVENTS_MAX];
	struct rd_entry e[NSLOTS];
	uint8_t buf[16384];
	pthread_t th;
};

struct writer {
	int first, n;       /* its clients */
	uint64_t rng;
	uint64_t writes, steady_writes;
	pthread_t th;
};

enum phase { PH_CHURN, PH_STOP_WRITES, PH_DRAIN };

static struct client *clients;
static struct writer writers[NWRITERS];
static _Atomic int phase;
static _Atomic bool quit;
static pthread_barrier_t bar_start, bar_written, bar_end;
static _Atomic unsigned long violations[V_COUNT];
static _Atomic unsigned details;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int round_no;
static const char *sock_path;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static unsigned pick(uint64_t *x, unsigned n)
{
	return (unsigned)(rnd(x) % n);
}

static void violation(enum violation v, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void violation(enum violation v, const char *fmt, ...)
{
	atomic_fetch_add(&violations[v], 1);
	if (atomic_fetch_add(&details, 1) >= DETAILS_MAX)
		return;
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&print_lock);
	fprintf(stderr, "soak: VIOLATION (%s), round %d: ", violation_name[v], round_no);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&print_lock);
	va_end(ap);
}

static void describe(const struct slot *s, char *buf, size_t len)
{
	snprintf(buf, len,
		 "%s%s, token %#llx, %s, interest %#x, credit %d, last tick %u%s, written %llu, read %llu",
		 s->steady ? "steady " : "", kind_name[s->kind], (unsigned long long)s->token,
		 s->flags & RD_ONESHOT ? "oneshot" : "edge", s->interest, s->credit, s->last_tick,
		 s->seen ? "" : " (no event yet)", (unsigned long long)s->written,
		 (unsigned long long)s->consumed);
}

/* A call failed: the connection may be dead, so this client stops where it is. */
static int call_failed(struct client *cl, const char *what, int r)
{
	violation(V_CALL, "client %d: %s: %s", cl->id, what, strerror(-r));
	cl->dead = true;
	return r;
}

/* ---- fds ---- */

static int slot_open(struct slot *s, enum kind k, bool steady)
{
	int p[2];
	memset(s, 0, sizeof(*s));
	s->kind = k;
	s->steady = steady;
	s->rfd = s->wfd = -1;
	atomic_store(&s->acked, 0);
	switch (k) {
	case K_PIPE:
		if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
			return -errno;
		s->rfd = p[0];
		s->wfd = p[1];
		break;
	case K_EVENTFD:
		s->rfd = s->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (s->rfd < 0)
			return -errno;
		break;
	case K_SOCKET:
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p) < 0)
			return -errno;
		s->rfd = p[0];
		s->wfd = p[1];
		break;
	}
	return 0;
}

static void slot_close(struct slot *s)
{
	if (s->wfd >= 0 && s->wfd != s->rfd)
		close(s->wfd);
	if (s->rfd >= 0)
		close(s->rfd);
	s->rfd = s->wfd = -1;
}

/* Read until EAGAIN, as edge mode requires after an event; at most READS_PER_EVENT
 * reads in one go, the rest owed for the next turn. */
static void slot_read(struct client *cl, struct slot *s)
{
	for (int i = 0; i < READS_PER_EVENT; i++) {
		ssize_t n;
		if (s->kind == K_EVENTFD) {
			uint64_t v;
			n = read(s->rfd, &v, sizeof(v));
			if (n == (ssize_t)sizeof(v)) {
				s->consumed += v;
				cl->st.consumed += v;
				continue;
			}
		} else {
			n = read(s->rfd, cl->buf, sizeof(cl->buf));
			if (n > 0) {
				s->consumed += (uint64_t)n;
				cl->st.consumed += (uint64_t)n;
				continue;
			}
		}
		if (n < 0 && errno == EINTR)
			continue;
		s->owe_read = false;
		atomic_store_explicit(&s->acked, s->consumed, memory_order_release);
		if (n < 0 && errno == EAGAIN)
			return;
		violation(V_IO, "client %d: read of a %s: %s", cl->id, kind_name[s->kind],
			  n == 0 ? "end of file" : strerror(errno));
		return;
	}
	s->owe_read = true;
}

/* ---- the oracle, event side ---- */

static struct slot *slot_of(struct client *cl, uint64_t token)
{
	for (int i = 0; i < NSLOTS; i++)
		if (cl->s[i].token == token)
			return &cl->s[i];
	return NULL;
}

static bool watching(const struct slot *s)
{
	return s->token && (s->interest & RD_READABLE) &&
	       (!(s->flags & RD_ONESHOT) || s->credit > 0);
}

static void on_event(struct client *cl, const struct rd_event *e)
{
	char d[256];
	cl->st.events++;
	struct slot *s = e->token ? slot_of(cl, e->token) : NULL;
	if (!s) {
		uint64_t seq = e->token & ((1ull << TOKEN_SEQ_BITS) - 1);
		if (e->token >> TOKEN_SEQ_BITS != (uint64_t)cl->id + 1 || seq == 0 ||
		    seq > cl->next_seq)
			violation(V_UNKNOWN_TOKEN, "client %d: token %#llx, ready %#x, tick %u",
				  cl->id, (unsigned long long)e->token, e->ready, e->tick);
		else
			violation(V_AFTER_DELETE, "client %d: token %#llx, ready %#x, tick %u",
				  cl->id, (unsigned long long)e->token, e->ready, e->tick);
		return;
	}
	if (e->ready & ~s->interest & INTEREST_MASK) {
		describe(s, d, sizeof(d));
		violation(V_INTEREST, "client %d: ready %#x, tick %u; %s", cl->id, e->ready, e->tick, d);
	}
	if ((e->ready & ALWAYS_BITS) || !(e->ready & INTEREST_MASK)) {
		describe(s, d, sizeof(d));
		violation(V_BITS, "client %d: ready %#x, tick %u; %s", cl->id, e->ready, e->tick, d);
	}
	if (e->tick == 0 || (s->seen && (int32_t)(e->tick - s->last_tick) <= 0)) {
		describe(s, d, sizeof(d));
		violation(V_TICK, "client %d: tick %u; %s", cl->id, e->tick, d);
	}
	if (s->flags & RD_ONESHOT) {
		if (s->credit == 0) {
			describe(s, d, sizeof(d));
			violation(s->from_edge ? V_ONESHOT_EDGE : V_ONESHOT,
				  "client %d: ready %#x, tick %u; %s", cl->id, e->ready, e->tick, d);
		}
		s->credit = 0;
	}
	s->seen = true;
	s->last_tick = e->tick;
	if (e->ready & RD_WRITABLE)
		cl->st.writable++;
	if (e->ready & RD_READABLE) {
		cl->st.readable++;
		slot_read(cl, s);
	}
}

/* Take what events there are, or wait up to timeout_ms for some. Returns how many, or
 * -1 when the connection failed. */
static int take_events(struct client *cl, int timeout_ms)
{
	for (int i = 0; i < NSLOTS; i++)
		if (cl->s[i].owe_read)
			slot_read(cl, &cl->s[i]);
	/* A small array now and then, so the library keeps the rest of a batch for the
	 * next call, where the delete and modify calls in between must filter it. */
	size_t max = pick(&cl->rng, 2) ? EVENTS_MAX : 1 + pick(&cl->rng, 3);
	int n = rd_wait(cl->c, cl->ev, max, timeout_ms);
	if (n < 0) {
		call_failed(cl, "rd_wait", n);
		return -1;
	}
	for (int i = 0; i < n; i++)
		on_event(cl, &cl->ev[i]);
	return n;
}

/* ---- the churn: calls, and the model they update ---- */

/* Interest sets that can fire, by kind and mode. A oneshot registration always can:
 * a pipe's read end is never writable, so a oneshot one always wants READABLE. */
static uint32_t pick_interest(struct client *cl, enum kind k, bool oneshot)
{
	static const uint32_t pipe_edge[] = { RD_READABLE, RD_READABLE | RD_PRIORITY, RD_WRITABLE,
					      RD_READABLE | RD_WRITABLE };
	static const uint32_t pipe_oneshot[] = { RD_READABLE, RD_READABLE | RD_PRIORITY,
						 RD_READABLE | RD_WRITABLE };
	static const uint32_t any_edge[] = { RD_READABLE, RD_WRITABLE, RD_READABLE | RD_WRITABLE,
					     RD_READABLE | RD_PRIORITY, RD_PRIORITY };
	static const uint32_t any_oneshot[] = { RD_READABLE, RD_WRITABLE, RD_READABLE | RD_WRITABLE,
						RD_READABLE | RD_PRIORITY };
	if (k == K_PIPE)
		return oneshot ? pipe_oneshot[pick(&cl->rng, 3)] : pipe_edge[pick(&cl->rng, 4)];
	return oneshot ? any_oneshot[pick(&cl->rng, 4)] : any_edge[pick(&cl->rng, 5)];
}

static uint64_t new_token(struct client *cl)
{
	return ((uint64_t)cl->id + 1) << TOKEN_SEQ_BITS | ++cl->next_seq;
}

/* The model after a successful call on s. An arm (oneshot add, modify or rearm) allows
 * exactly one event: oneshot slots are armed only when their credit is 0, that is,
 * once the event of the previous arm has been taken, so a second event is a fault. */
static void model_add(struct slot *s, uint64_t token, uint32_t interest, uint32_t flags)
{
	s->token = token;
	s->interest = interest;
	s->flags = flags;
	s->credit = flags & RD_ONESHOT ? 1 : 0;
	s->from_edge = false;
	s->seen = false;
	s->last_tick = 0;
}

static void model_modify(struct slot *s, uint32_t interest, uint32_t flags)
{
	s->from_edge |= !(s->flags & RD_ONESHOT) && (flags & RD_ONESHOT);
	s->interest = interest;
	s->flags = flags;
	s->credit = flags & RD_ONESHOT ? 1 : 0;
}

static void model_rearm(struct slot *s)
{
	if (s->flags & RD_ONESHOT)
		s->credit = 1;
}

static bool can_modify(const struct slot *s)
{
	return s->token && (!(s->flags & RD_ONESHOT) || s->credit == 0);
}

static bool can_rearm(const struct slot *s)
{
	return s->token && (!(s->flags & RD_ONESHOT) || s->credit == 0);
}

/* The new mode of a modify: either mode becomes the other one time in four. From
 * edge to oneshot, the modify is the oneshot's arm, so it allows one event, as any
 * arm: libreadyd(3) promises "one event, then nothing until rd_rearm() or
 * rd_modify()". An edge event already on its way when the modify is answered (held
 * by the library, or pending in the daemon) spends that one event, and the oneshot's
 * own event is then a second one: V_ONESHOT_EDGE, which counts every oneshot fault of
 * a registration that was ever modified from edge to oneshot, so that V_ONESHOT keeps
 * the others. */
static uint32_t modify_flags(struct client *cl, const struct slot *s)
{
	bool flip = pick(&cl->rng, 4) == 0;
	return (s->flags & RD_ONESHOT) != flip ? RD_ONESHOT : RD_EDGE;
}

static int op_add(struct client *cl, struct slot *s)
{
	uint32_t flags = pick(&cl->rng, 2) ? RD_ONESHOT : RD_EDGE;
	uint32_t interest = pick_interest(cl, s->kind, flags & RD_ONESHOT);
	uint64_t token = new_token(cl);
	int r = rd_add(cl->c, s->rfd, token, interest, flags);
	if (r < 0)
		return call_failed(cl, "rd_add", r);
	model_add(s, token, interest, flags);
	cl->st.add++;
	return 0;
}

static int op_delete(struct client *cl, struct slot *s)
{
	int r = rd_delete(cl->c, s->token);
	if (r < 0)
		return call_failed(cl, "rd_delete", r);
	s->token = 0;
	cl->st.del++;
	return 0;
}

static int op_modify(struct client *cl, struct slot *s)
{
	uint32_t flags = modify_flags(cl, s);
	uint32_t interest = pick_interest(cl, s->kind, flags & RD_ONESHOT);
	int r = rd_modify(cl->c, s->token, interest, flags);
	if (r < 0)
		return call_failed(cl, "rd_modify", r);
	model_modify(s, interest, flags);
	cl->st.mod++;
	return 0;
}

static int op_rearm(struct client *cl, struct slot *s)
{
	int r = rd_rearm(cl->c, s->token);
	if (r < 0)
		return call_failed(cl, "rd_rearm", r);
	model_rearm(s);
	cl->st.rearm++;
	return 0;
}

enum batch_kind { B_ADD, B_DEL, B_MOD, B_REARM };

/* A batched call over every slot it applies to (each with probability 1/2, at least
 * one), then the model of each entry that succeeded. */
static int op_batch(struct client *cl, enum batch_kind b)
{
	int idx[NSLOTS];
	size_t n = 0;
	for (int i = 0; i < NCHURN; i++) {
		struct slot *s = &cl->s[i];
		bool fits = b == B_ADD ? !s->token : b == B_DEL ? s->token != 0 :
			    b == B_MOD ? can_modify(s) : can_rearm(s);
		if (fits && (n == 0 || pick(&cl->rng, 2)))
			idx[n++] = i;
	}
	if (n == 0)
		return 0;
	for (size_t k = 0; k < n; k++) {
		struct slot *s = &cl->s[idx[k]];
		struct rd_entry *e = &cl->e[k];
		*e = (struct rd_entry){ .fd = -1, .token = s->token, .status = 1 };
		if (b == B_ADD) {
			e->fd = s->rfd;
			e->token = new_token(cl);
			e->flags = pick(&cl->rng, 2) ? RD_ONESHOT : RD_EDGE;
			e->interest = pick_interest(cl, s->kind, e->flags & RD_ONESHOT);
		} else if (b == B_MOD) {
			e->flags = modify_flags(cl, s);
			e->interest = pick_interest(cl, s->kind, e->flags & RD_ONESHOT);
		}
	}
	static const char *const name[] = { "rd_add_batch", "rd_delete_batch", "rd_modify_batch",
					     "rd_rearm_batch" };
	int r = b == B_ADD ? rd_add_batch(cl->c, cl->e, n) :
		b == B_DEL ? rd_delete_batch(cl->c, cl->e, n) :
		b == B_MOD ? rd_modify_batch(cl->c, cl->e, n) : rd_rearm_batch(cl->c, cl->e, n);
	cl->st.batches++;
	if (r < 0)
		return call_failed(cl, name[b], r);
	for (size_t k = 0; k < n; k++) {
		struct slot *s = &cl->s[idx[k]];
		struct rd_entry *e = &cl->e[k];
		if (e->status != 0) {
			violation(V_CALL, "client %d: %s: entry %zu of %zu: %s", cl->id, name[b], k, n,
				  e->status < 0 ? strerror(-e->status) : "no status");
			/* The entry's fate is unknown: stop trusting this connection. */
			cl->dead = true;
			continue;
		}
		switch (b) {
		case B_ADD:
			model_add(s, e->token, e->interest, e->flags);
			cl->st.add++;
			break;
		case B_DEL:
			s->token = 0;
			cl->st.del++;
			break;
		case B_MOD:
			model_modify(s, e->interest, e->flags);
			cl->st.mod++;
			break;
		case B_REARM:
			model_rearm(s);
			cl->st.rearm++;
			break;
		}
	}
	return 0;
}

static int watch_all(struct client *cl);

/* Close the connection with its registrations and events in flight, and open another:
 * the daemon drops them all at once. Tokens go on from where they were, so an event of
 * the old connection would still be caught. Every slot is registered again at once. */
static int op_reconnect(struct client *cl)
{
	rd_close(cl->c);
	cl->c = NULL;
	for (int i = 0; i < NSLOTS; i++)
		cl->s[i].token = 0;
	int r = rd_open(&cl->c, sock_path);
	if (r < 0)
		return call_failed(cl, "rd_open (reconnect)", r);
	cl->st.reconnects++;
	return watch_all(cl);
}

/* One step of churn: a call on a random churned slot, or now and then a batch; and the
 * re-arm of a steady oneshot slot whose event was taken. */
static int churn_step(struct client *cl)
{
	for (int i = NCHURN; i < NSLOTS && !cl->dead; i++)
		if ((cl->s[i].flags & RD_ONESHOT) && cl->s[i].token && cl->s[i].credit == 0)
			op_rearm(cl, &cl->s[i]);
	if (cl->dead)
		return 0;
	if (pick(&cl->rng, 4000) == 0)
		return op_reconnect(cl);
	unsigned r = pick(&cl->rng, 100);
	if (r < 8)
		return op_batch(cl, (enum batch_kind)pick(&cl->rng, 4));
	struct slot *s = &cl->s[pick(&cl->rng, NCHURN)];
	if (!s->token)
		return op_add(cl, s);
	if (r < 38)
		return op_delete(cl, s);
	if (r < 69 && can_modify(s))
		return op_modify(cl, s);
	if (can_rearm(s))
		return op_rearm(cl, s);
	/* An armed oneshot slot: wait for its event, then. */
	return 0;
}

/* ---- the oracle, drain side ---- */

/* Whether s is as it must be once quiet: all data read if it was watched (or 'all'),
 * and an armed oneshot registration for an always-writable fd has fired. */
static bool settled(const struct slot *s, bool all)
{
	if ((all || watching(s)) && (s->owe_read || s->consumed != s->written))
		return false;
	if (s->token && (s->flags & RD_ONESHOT) && s->credit > 0 &&
	    (s->interest & RD_WRITABLE) && s->kind != K_PIPE)
		return false;
	return true;
}

/* Take events until none came for quiet_ms, at most max_ms in all. */
static void drain(struct client *cl, int quiet_ms, int max_ms)
{
	long long start = now_ms(), last = start;
	while (!cl->dead && now_ms() - start < max_ms) {
		int n = take_events(cl, 10);
		if (n != 0) {
			last = now_ms();
			continue;
		}
		bool owed = false;
		for (int i = 0; i < NSLOTS; i++)
			owed |= cl->s[i].owe_read;
		if (!owed && now_ms() - last >= quiet_ms)
			return;
	}
}

/* After the writers stopped: drain, then every slot watched ('all': every slot) must
 * have had all its data reported. A late slot gets a longer, quieter drain before it
 * counts: the check waits for eventual delivery, it never asserts a latency. */
static void check_quiet(struct client *cl, bool all, const char *when)
{
	drain(cl, QUIET_MS, PATIENCE_MS);
	bool ok = true;
	for (int i = 0; i < NSLOTS; i++)
		ok &= settled(&cl->s[i], all);
	if (ok || cl->dead)
		return;
	drain(cl, PATIENCE_QUIET_MS, PATIENCE_MS);
	for (int i = 0; i < NSLOTS && !cl->dead; i++) {
		struct slot *s = &cl->s[i];
		if (settled(s, all))
			continue;
		char d[256];
		describe(s, d, sizeof(d));
		violation(V_LOST, "client %d, %s: %s", cl->id, when, d);
		/* Start the next round from a known state. */
		slot_read(cl, s);
		s->consumed = s->written;
		atomic_store(&s->acked, s->consumed);
		s->owe_read = false;
		if (s->flags & RD_ONESHOT)
			s->credit = 0;
	}
}

/* Bring every slot to "watched": registered, READABLE in its interest, armed. Batched
 * calls, so the batch forms see this load too. */
static int watch_all(struct client *cl)
{
	struct rd_entry add[NSLOTS], mod[NSLOTS], rearm[NSLOTS];
	int ia[NSLOTS], im[NSLOTS], ir[NSLOTS];
	size_t na = 0, nm = 0, nr = 0;
	for (int i = 0; i < NSLOTS; i++) {
		struct slot *s = &cl->s[i];
		if (!s->token) {
			uint32_t flags = pick(&cl->rng, 2) ? RD_ONESHOT : RD_EDGE;
			ia[na] = i;
			add[na++] = (struct rd_entry){ .fd = s->rfd, .token = new_token(cl),
						       .interest = pick_interest(cl, s->kind, flags) |
								   RD_READABLE,
						       .flags = flags };
		} else if (!(s->interest & RD_READABLE)) {
			im[nm] = i;
			mod[nm++] = (struct rd_entry){ .fd = -1, .token = s->token,
						       .interest = s->interest | RD_READABLE,
						       .flags = s->flags };
		} else if ((s->flags & RD_ONESHOT) && s->credit == 0) {
			ir[nr] = i;
			rearm[nr++] = (struct rd_entry){ .fd = -1, .token = s->token };
		}
	}
	int r;
	if (na && (r = rd_add_batch(cl->c, add, na)) != (int)na)
		return call_failed(cl, "rd_add_batch (watch all)", r < 0 ? r : -EIO);
	for (size_t k = 0; k < na; k++)
		model_add(&cl->s[ia[k]], add[k].token, add[k].interest, add[k].flags);
	if (nm && (r = rd_modify_batch(cl->c, mod, nm)) != (int)nm)
		return call_failed(cl, "rd_modify_batch (watch all)", r < 0 ? r : -EIO);
	for (size_t k = 0; k < nm; k++)
		model_modify(&cl->s[im[k]], mod[k].interest, mod[k].flags);
	if (nr && (r = rd_rearm_batch(cl->c, rearm, nr)) != (int)nr)
		return call_failed(cl, "rd_rearm_batch (watch all)", r < 0 ? r : -EIO);
	for (size_t k = 0; k < nr; k++)
		model_rearm(&cl->s[ir[k]]);
	cl->st.add += na;
	cl->st.mod += nm;
	cl->st.rearm += nr;
	cl->st.batches += (na > 0) + (nm > 0) + (nr > 0);
	return 0;
}

/* Between rounds, now and then, a slot gets new fds of a random kind: the daemon's copy
 * of the old ones is closed by the delete, and the new ones are registered, watched. */
static int renew_slot(struct client *cl)
{
	if (pick(&cl->rng, 2))
		return 0;
	struct slot *s = &cl->s[pick(&cl->rng, NSLOTS)];
	if (s->token)
		op_delete(cl, s);
	if (cl->dead)
		return 0;
	slot_close(s);
	int r = slot_open(s, (enum kind)pick(&cl->rng, 3), s->steady);
	if (r < 0)
		return call_failed(cl, "new fds", r);
	uint32_t flags = pick(&cl->rng, 2) ? RD_ONESHOT : RD_EDGE;
	uint32_t interest = pick_interest(cl, s->kind, flags) | RD_READABLE;
	uint64_t token = new_token(cl);
	r = rd_add(cl->c, s->rfd, token, interest, flags);
	if (r < 0)
		return call_failed(cl, "rd_add (new fds)", r);
	model_add(s, token, interest, flags);
	cl->st.add++;
	return 0;
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	for (;;) {
		pthread_barrier_wait(&bar_start);
		if (atomic_load(&quit))
			break;
		/* The steady slots need registering in the first round; later rounds start
		 * as the last one ended, every slot watched. */
		if (!cl->dead)
			watch_all(cl);
		while (!cl->dead && atomic_load(&phase) != PH_DRAIN) {
			churn_step(cl);
			if (!cl->dead)
				take_events(cl, 0);
		}
		while (atomic_load(&phase) != PH_DRAIN)
			nap_ms(1);
		if (!cl->dead)
			check_quiet(cl, false, "as left by the churn");
		if (!cl->dead)
			watch_all(cl);
		if (!cl->dead)
			check_quiet(cl, true, "after watching every fd");
		if (!cl->dead)
			renew_slot(cl);
		pthread_barrier_wait(&bar_end);
	}
	return NULL;
}

/* ---- the writers ---- */

static void write_slot(struct writer *w, struct slot *s)
{
	static const uint8_t bytes[16] = "0123456789abcdef";
	if (s->steady) {
		if (atomic_load_explicit(&s->acked, memory_order_acquire) != s->written)
			return;
		w->steady_writes++;
	}
	if (s->kind == K_EVENTFD) {
		uint64_t v = 1 + rnd(&w->rng) % 3;
		if (write(s->wfd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
			s->written += v;
			w->writes++;
		}
	} else {
		size_t len = 1 + rnd(&w->rng) % sizeof(bytes);
		ssize_t n = s->kind == K_PIPE ? write(s->wfd, bytes, len) :
						send(s->wfd, bytes, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			s->written += (uint64_t)n;
			w->writes++;
		}
	}
}

/* Keep the fds of its clients ready: bursts of writes to random slots, whatever their
 * registration, with a pause between bursts that leaves the CPU to the churn. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	for (;;) {
		pthread_barrier_wait(&bar_start);
		if (atomic_load(&quit))
			break;
		while (atomic_load(&phase) == PH_CHURN) {
			for (int i = 0; i < 32; i++) {
				struct client *cl = &clients[w->first + (int)(rnd(&w->rng) % (uint64_t)w->n)];
				write_slot(w, &cl->s[rnd(&w->rng) % NSLOTS]);
			}
			struct timespec ts = { 0, 200 * 1000 };
			nanosleep(&ts, NULL);
		}
		pthread_barrier_wait(&bar_written);
	}
	return NULL;
}

/* ---- connect/HELLO/close cycles ---- */

static _Atomic long cycles_claimed, cycles_done;
static long long cycles_deadline;

static void *cycler_main(void *arg)
{
	(void)arg;
	while (now_ms() < cycles_deadline) {
		if (atomic_fetch_add(&cycles_claimed, 1) >= CYCLES_TARGET)
			break;
		rd_client *c;
		int r = rd_open(&c, sock_path);
		if (r < 0) {
			violation(V_CYCLE, "rd_open: %s", strerror(-r));
			nap_ms(10);
			continue;
		}
		rd_close(c);
		atomic_fetch_add(&cycles_done, 1);
	}
	return NULL;
}

/* ---- main ---- */

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "soak: FAIL: watchdog: the run took far longer than it may\n";
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(3);
}

static void sum_stats(struct stats *t)
{
	memset(t, 0, sizeof(*t));
	for (int i = 0; i < NCLIENTS; i++) {
		const struct stats *s = &clients[i].st;
		t->add += s->add;
		t->del += s->del;
		t->mod += s->mod;
		t->rearm += s->rearm;
		t->batches += s->batches;
		t->reconnects += s->reconnects;
		t->events += s->events;
		t->readable += s->readable;
		t->writable += s->writable;
		t->consumed += s->consumed;
	}
	for (int i = 0; i < NWRITERS; i++)
		t->writes += writers[i].writes;
	for (int i = 0; i < NWRITERS; i++)
		t->steady_writes += writers[i].steady_writes;
}

static int start_threads(size_t stack)
{
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, stack);
	for (int i = 0; i < NCLIENTS; i++)
		if (pthread_create(&clients[i].th, &at, client_main, &clients[i]) != 0)
			return -EAGAIN;
	for (int i = 0; i < NWRITERS; i++)
		if (pthread_create(&writers[i].th, &at, writer_main, &writers[i]) != 0)
			return -EAGAIN;
	pthread_attr_destroy(&at);
	return 0;
}

int main(int argc, char **argv)
{
	int seconds = 60;
	const char *env = getenv("SOAK_SECONDS");
	if (argc > 1)
		seconds = atoi(argv[1]);
	else if (env)
		seconds = atoi(env);
	if (seconds < 4 || seconds > 86400) {
		fprintf(stderr, "usage: soak [SECONDS], 4 to 86400 (default 60)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	/* Every phase is bounded; this catches a hang anyway, the daemon going with us. */
	alarm((unsigned)seconds * 2 + 120);

	long long t0 = now_ms();
	long long churn_ms = (long long)seconds * 10 * CHURN_SHARE;
	struct rdt_daemon d;
	int r = rdt_daemon_start(&d, NULL);
	if (r < 0) {
		fprintf(stderr, "soak: cannot start readyd: %s\n", strerror(-r));
		return 1;
	}
	sock_path = d.sock;
	int idle_fds = rdt_count_fds(d.pid);
	printf("soak: %d s; readyd pid %d on %s, %d fds idle\n", seconds, (int)d.pid, d.sock,
	       idle_fds);

	clients = calloc(NCLIENTS, sizeof(*clients));
	if (!clients)
		return 1;
	for (int i = 0; i < NCLIENTS; i++) {
		struct client *cl = &clients[i];
		cl->id = i;
		cl->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ (uint64_t)t0;
		r = rd_open(&cl->c, d.sock);
		for (int k = 0; r == 0 && k < NSLOTS; k++)
			r = slot_open(&cl->s[k], (enum kind)(k % 3), k >= NCHURN);
		if (r < 0) {
			fprintf(stderr, "soak: client %d: %s\n", i, strerror(-r));
			return 1;
		}
	}
	for (int i = 0; i < NWRITERS; i++)
		writers[i] = (struct writer){ .first = i * (NCLIENTS / NWRITERS),
					      .n = NCLIENTS / NWRITERS,
					      .rng = 0x2545f4914f6cdd1dull * (uint64_t)(i + 1) ^ (uint64_t)t0 };
	pthread_barrier_init(&bar_start, NULL, NCLIENTS + NWRITERS + 1);
	pthread_barrier_init(&bar_written, NULL, NWRITERS + 1);
	pthread_barrier_init(&bar_end, NULL, NCLIENTS + 1);
	if (start_threads(256 * 1024) < 0) {
		fprintf(stderr, "soak: cannot start threads\n");
		return 1;
	}

	/* Rounds of churn, each ended by the drain and its checks, until the churn's share
	 * of the time is spent; two at least, the first a warm-up for the RSS baseline. */
	long rss_warm = 0, rss_churn = 0;
	long long round_ms = ROUND_MS;
	for (round_no = 1;; round_no++) {
		long long rs = now_ms();
		atomic_store(&phase, PH_CHURN);
		pthread_barrier_wait(&bar_start);
		nap_ms((int)round_ms);
		atomic_store(&phase, PH_STOP_WRITES);
		pthread_barrier_wait(&bar_written);
		atomic_store(&phase, PH_DRAIN);
		pthread_barrier_wait(&bar_end);

		/* Quiet: every slot is registered, so the daemon holds one fd per connection
		 * and one per registration, exactly. */
		int want = idle_fds + NCLIENTS + NCLIENTS * NSLOTS;
		int fds = rdt_wait_fds(d.pid, want);
		long rss = rdt_rss_kib(d.pid);
		if (fds != want)
			violation(V_FDS, "after round %d: %d fds, want %d", round_no, fds, want);
		if (round_no == 1)
			rss_warm = rss;
		rss_churn = rss;
		struct stats t;
		sum_stats(&t);
		long long took = now_ms() - rs, drain_ms = took - round_ms;
		printf("round %d: %.1f s (drain %.1f s); calls %llu, events %llu, writes %llu; "
		       "daemon %d fds, RSS %ld KiB\n",
		       round_no, (double)took / 1000, (double)drain_ms / 1000,
		       (unsigned long long)(t.add + t.del + t.mod + t.rearm),
		       (unsigned long long)t.events, (unsigned long long)t.writes, fds, rss);
		fflush(stdout);
		/* The next round fits in what is left, its drain included. */
		long long left = churn_ms - (now_ms() - t0) - drain_ms;
		if (round_no >= 2 && left < 500)
			break;
		round_ms = left < ROUND_MS ? (left > 500 ? left : 500) : ROUND_MS;
	}
	atomic_store(&quit, true);
	pthread_barrier_wait(&bar_start);
	for (int i = 0; i < NCLIENTS; i++)
		pthread_join(clients[i].th, NULL);
	for (int i = 0; i < NWRITERS; i++)
		pthread_join(writers[i].th, NULL);
	long long churn_took = now_ms() - t0;
	for (int i = 0; i < NCLIENTS; i++) {
		rd_close(clients[i].c);
		for (int k = 0; k < NSLOTS; k++)
			slot_close(&clients[i].s[k]);
	}
	int fds_after_churn = rdt_wait_fds(d.pid, idle_fds);
	if (fds_after_churn != idle_fds)
		violation(V_FDS, "after the churn, its clients closed: %d fds, want %d",
			  fds_after_churn, idle_fds);

	/* Connect/HELLO/close cycles, for the rest of the time or a million. */
	long long cs = now_ms();
	cycles_deadline = t0 + (long long)seconds * 1000;
	if (cycles_deadline < cs + 1000)
		cycles_deadline = cs + 1000;
	pthread_t cy[NCYCLERS];
	for (int i = 0; i < NCYCLERS; i++)
		if (pthread_create(&cy[i], NULL, cycler_main, NULL) != 0) {
			fprintf(stderr, "soak: cannot start threads\n");
			return 1;
		}
	for (int i = 0; i < NCYCLERS; i++)
		pthread_join(cy[i], NULL);
	long long cycles_ms = now_ms() - cs;
	long cycles = atomic_load(&cycles_done);

	int fds_end = rdt_wait_fds(d.pid, idle_fds);
	long rss_end = rdt_rss_kib(d.pid);
	if (fds_end != idle_fds)
		violation(V_FDS, "at the end: %d fds, want %d (idle)", fds_end, idle_fds);
	if (rss_churn > rss_warm + RSS_TOLERANCE_KIB)
		violation(V_RSS, "after the churn: %ld KiB, %ld KiB after the warm-up round",
			  rss_churn, rss_warm);
	if (rss_end > rss_warm + RSS_TOLERANCE_KIB)
		violation(V_RSS, "at the end: %ld KiB, %ld KiB after the warm-up round", rss_end,
			  rss_warm);
	int st = rdt_daemon_stop(&d);
	if (st != 0)
		violation(V_EXIT, "readyd ended with status %d on SIGTERM", st);

	struct stats t;
	sum_stats(&t);
	unsigned long total = 0;
	for (int v = 0; v < V_COUNT; v++)
		total += atomic_load(&violations[v]);
	double cs_s = (double)churn_took / 1000;
	printf("\nsoak summary (%d s; %d clients x %d fds: pipes, eventfds, socketpairs; %d writers)\n",
	       seconds, NCLIENTS, NSLOTS, NWRITERS);
	printf("  churn        %.1f s, %d rounds\n", cs_s, round_no);
	printf("  add          %llu\n", (unsigned long long)t.add);
	printf("  delete       %llu\n", (unsigned long long)t.del);
	printf("  modify       %llu\n", (unsigned long long)t.mod);
	printf("  rearm        %llu\n", (unsigned long long)t.rearm);
	printf("  reconnects   %llu (rd_close with every slot registered, rd_open)\n",
	       (unsigned long long)t.reconnects);
	printf("  calls/s      %.0f (entries; %llu batched calls among them)\n",
	       (double)(t.add + t.del + t.mod + t.rearm) / cs_s, (unsigned long long)t.batches);
	printf("  events       %llu (%llu readable, %llu writable), %.0f/s\n",
	       (unsigned long long)t.events, (unsigned long long)t.readable,
	       (unsigned long long)t.writable, (double)t.events / cs_s);
	printf("  writes       %llu (%llu ping-pong to steady fds), %llu bytes/counts read back\n",
	       (unsigned long long)t.writes, (unsigned long long)t.steady_writes,
	       (unsigned long long)t.consumed);
	printf("  cycles       %ld connect/HELLO/close in %.1f s, %.0f/s%s\n", cycles,
	       (double)cycles_ms / 1000, cycles_ms ? (double)cycles * 1000 / (double)cycles_ms : 0.0,
	       cycles >= CYCLES_TARGET ? " (the full million)" : "");
	printf("  daemon fds   %d idle, %d after the churn, %d at the end\n", idle_fds,
	       fds_after_churn, fds_end);
	printf("  daemon RSS   %ld KiB after warm-up, %ld KiB after the churn, %ld KiB at the end\n",
	       rss_warm, rss_churn, rss_end);
	printf("  daemon exit  %d on SIGTERM\n", st);
	printf("  violations   %lu\n", total);
	for (int v = 0; v < V_COUNT; v++)
		if (atomic_load(&violations[v]))
			printf("    %-28s %lu\n", violation_name[v], atomic_load(&violations[v]));
	printf("soak: %s\n", total ? "FAIL" : "ok");
	return total ? 1 : 0;
}
