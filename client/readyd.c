/* libreadyd: the client side of the readyd protocol (see readyd.h and libreadyd(3)).
 * Requests are synchronous: a call sends its requests and reads until their replies
 * arrive. EVENTS that arrive meanwhile are kept, in order, for the next rd_wait. */
#include "readyd.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "../proto/rdp_io.h"
#include "../proto/rdp_path.h"

_Static_assert(RD_BATCH_MAX == RDP_BATCH_MAX, "batch size");
_Static_assert(RD_READABLE == RDP_INTEREST_READABLE && RD_WRITABLE == RDP_INTEREST_WRITABLE &&
		       RD_PRIORITY == RDP_INTEREST_PRIORITY && RD_ONESHOT == RDP_FLAG_ONESHOT,
	       "interest bits are the wire bits");
_Static_assert(RD_READ_CLOSED == RDP_READY_READ_CLOSED && RD_WRITE_CLOSED == RDP_READY_WRITE_CLOSED &&
		       RD_ERROR == RDP_READY_ERROR,
	       "readiness bits are the wire bits");

/* Requests in flight at once in a batched call; each reply is at most 1 KiB, well under
 * the daemon's per-client output limit, so pipelining never stalls the daemon. */
#define PIPELINE_DEPTH 8

struct rd_client {
	int fd;
	int dead;          /* 0, or the -errno every call now returns */
	uint32_t next_id;
	struct rd_event *evq; /* events received while waiting for replies */
	size_t evq_head, evq_len, evq_cap;
	size_t rx_len;
	struct rdp_hdr rx_hdr;
	uint8_t rx[RDP_MSG_MAX];
	uint8_t tx[RDP_MSG_MAX];
};

int rd_default_socket_path(char *buf, size_t len)
{
	return rdp_default_socket_path(buf, len);
}

static int fail(rd_client *c, int err)
{
	if (!c->dead)
		c->dead = err;
	return c->dead;
}

static uint32_t new_id(rd_client *c)
{
	if (++c->next_id == 0)
		c->next_id = 1;
	return c->next_id;
}

static int evq_push(rd_client *c, const struct rd_event *ev)
{
	if (c->evq_head + c->evq_len == c->evq_cap) {
		if (c->evq_head > 0) {
			memmove(c->evq, c->evq + c->evq_head, c->evq_len * sizeof(*c->evq));
			c->evq_head = 0;
		}
		if (c->evq_len == c->evq_cap) {
			size_t ncap = c->evq_cap ? c->evq_cap * 2 : 256;
			struct rd_event *n = realloc(c->evq, ncap * sizeof(*n));
			if (!n)
				return -ENOMEM;
			c->evq = n;
			c->evq_cap = ncap;
		}
	}
	c->evq[c->evq_head + c->evq_len++] = *ev;
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receive one message from the daemon into c->rx, waiting up to timeout_ms (-1: block).
 * Returns 1 with a checked message, 0 on timeout, or -errno. ERROR from the daemon
 * ends the connection with the errno it carries. */
static int recv_msg(rd_client *c, int timeout_ms)
{
	struct rdp_rx rx;
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	int r;

	if (c->dead)
		return c->dead;
	for (;;) {
		if (timeout_ms > 0) {
			int64_t left = deadline - now_ms();
			if (left < 0)
				left = 0;
			struct timespec ts = { .tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000 };
			struct pollfd p = { .fd = c->fd, .events = POLLIN };
			r = ppoll(&p, 1, &ts, NULL);
			if (r < 0 && errno != EINTR)
				return fail(c, -errno);
			if (r <= 0) {
				if (left == 0)
					return 0;
				continue;
			}
		}
		r = rdp_recv(c->fd, c->rx, sizeof(c->rx), &rx, timeout_ms >= 0);
		if (r == -EAGAIN) {
			if (timeout_ms == 0)
				return 0;
			continue;
		}
		if (r < 0)
			return fail(c, r);
		if (r == 0)
			return fail(c, -ECONNRESET);
		break;
	}
	if (rx.nfds > 0 || rx.truncated || rx.ctruncated) {
		rdp_rx_close_fds(&rx);
		return fail(c, -EPROTO);
	}
	if (rdp_check_daemon_msg(c->rx, rx.len, 0, &c->rx_hdr) != RDP_E_NONE)
		return fail(c, -EPROTO);
	c->rx_len = rx.len;
	if (c->rx_hdr.type == RDP_MSG_ERROR) {
		uint32_t err, reason;
		const char *text;
		size_t tl;
		rdp_error_get(c->rx, c->rx_len, &err, &reason, &text, &tl);
		return fail(c, err > 0 && err < 4096 ? -(int)err : -EPROTO);
	}
	return 1;
}

/* Keep the records of the EVENTS message in c->rx for rd_wait. */
static int keep_events(rd_client *c)
{
	for (uint32_t i = 0; i < c->rx_hdr.count; i++) {
		struct rdp_event e;
		rdp_event_get(c->rx, i, &e);
		struct rd_event ev = { .token = e.token, .ready = e.ready, .tick = e.tick };
		if (evq_push(c, &ev) < 0)
			return fail(c, -ENOMEM);
	}
	return 0;
}

/* Read until the answer of type 'type' to request 'id' is in c->rx. Answers come in
 * request order, so any other answer is a protocol violation. */
static int await(rd_client *c, uint16_t type, uint32_t id)
{
	for (;;) {
		int r = recv_msg(c, -1);
		if (r < 0)
			return r;
		if (c->rx_hdr.type == RDP_MSG_EVENTS) {
			r = keep_events(c);
			if (r < 0)
				return r;
			continue;
		}
		if (c->rx_hdr.type != type || c->rx_hdr.id != id)
			return fail(c, -EPROTO);
		return 0;
	}
}

int rd_adopt(rd_client **out, int fd)
{
	if (!out || fd < 0)
		return -EINVAL;
	rd_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	uint32_t id = new_id(c);
	size_t len = rdp_encode_hello(c->tx, sizeof(c->tx), id, RDP_VERSION, 0);
	int r = rdp_send(fd, c->tx, len, NULL, 0, false);
	if (r == 0)
		r = await(c, RDP_MSG_WELCOME, id);
	if (r == 0) {
		struct rdp_welcome w;
		rdp_welcome_get(c->rx, &w);
		if (w.version != RDP_VERSION)
			r = -EPROTONOSUPPORT;
	}
	if (r < 0) {
		free(c->evq);
		free(c);
		return r;
	}
	*out = c;
	return 0;
}

int rd_open(rd_client **out, const char *path)
{
	char def[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_un sa;
	int r;

	if (!out)
		return -EINVAL;
	if (!path) {
		r = rdp_default_socket_path(def, sizeof(def));
		if (r < 0)
			return r;
		path = def;
	}
	int salen = rdp_sockaddr(&sa, path);
	if (salen < 0)
		return salen;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, (socklen_t)salen) < 0) {
		r = -errno;
		goto out_close_fd;
	}
	r = rd_adopt(out, fd);
	if (r < 0)
		goto out_close_fd;
	return 0;

out_close_fd:
	close(fd);
	return r;
}

void rd_close(rd_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->evq);
	free(c);
}

int rd_fd(const rd_client *c)
{
	return c ? c->fd : -EINVAL;
}

/* Encode entries [i, i + n) of a batch as one request of 'type' and send it. */
static int send_chunk(rd_client *c, uint16_t type, const struct rd_entry *e, uint32_t n,
		      uint32_t id)
{
	struct rdp_add_entry ae[RDP_BATCH_MAX];
	uint64_t tok[RDP_BATCH_MAX];
	int fds[RDP_BATCH_MAX];
	size_t len;

	for (uint32_t i = 0; i < n; i++) {
		ae[i] = (struct rdp_add_entry){ .token = e[i].token, .interest = e[i].interest,
						.flags = e[i].flags };
		tok[i] = e[i].token;
		fds[i] = e[i].fd;
	}
	switch (type) {
	case RDP_MSG_ADD:
		len = rdp_encode_add(c->tx, sizeof(c->tx), id, ae, n);
		break;
	case RDP_MSG_MOD:
		len = rdp_encode_mod(c->tx, sizeof(c->tx), id, ae, n);
		break;
	default:
		len = rdp_encode_tokens(c->tx, sizeof(c->tx), type, id, tok, n);
		break;
	}
	int r = rdp_send(c->fd, c->tx, len, fds, type == RDP_MSG_ADD ? n : 0, false);
	return r < 0 ? fail(c, r) : 0;
}

static bool entry_ok(uint16_t type, const struct rd_entry *e)
{
	if (type == RDP_MSG_ADD && e->fd < 0)
		return false;
	if (type == RDP_MSG_ADD || type == RDP_MSG_MOD)
		return !(e->interest & ~RDP_INTEREST_ALL) && !(e->flags & ~RDP_FLAG_ALL);
	return true;
}

struct tok_mask {
	uint64_t token;
	uint32_t mask; /* readiness still wanted: 0 after a delete */
};

static int cmp_tok(const void *a, const void *b)
{
	uint64_t x = ((const struct tok_mask *)a)->token, y = ((const struct tok_mask *)b)->token;
	return x < y ? -1 : x > y;
}

/* Events received before a DEL or MOD reply may still wait in evq. Apply the change to
 * them, so that nothing for a deleted token is returned once rd_delete has returned, and
 * events after rd_modify follow the new interest (as the daemon does for its queue). */
static int apply_to_queued(rd_client *c, uint16_t type, const struct rd_entry *e, size_t n)
{
	struct tok_mask *tm = malloc(n * sizeof(*tm));
	size_t nt = 0;
	if (!tm)
		return fail(c, -ENOMEM);
	for (size_t i = 0; i < n; i++)
		if (e[i].status == 0)
			tm[nt++] = (struct tok_mask){
				.token = e[i].token,
				.mask = type == RDP_MSG_DEL ? 0 : e[i].interest | RD_READ_CLOSED |
									 RD_WRITE_CLOSED | RD_ERROR,
			};
	qsort(tm, nt, sizeof(*tm), cmp_tok);
	size_t w = 0;
	for (size_t i = 0; i < c->evq_len; i++) {
		struct rd_event ev = c->evq[c->evq_head + i];
		struct tok_mask key = { .token = ev.token };
		const struct tok_mask *hit = bsearch(&key, tm, nt, sizeof(*tm), cmp_tok);
		if (hit)
			ev.ready &= hit->mask;
		if (ev.ready)
			c->evq[c->evq_head + w++] = ev;
	}
	c->evq_len = w;
	free(tm);
	return 0;
}

/* A batched call: chunks of up to 253 entries, up to PIPELINE_DEPTH requests in flight. */
static int batch(rd_client *c, uint16_t type, struct rd_entry *e, size_t n)
{
	uint32_t ids[PIPELINE_DEPTH];
	size_t sent = 0, done = 0, nok = 0;

	if (!c || (!e && n))
		return -EINVAL;
	if (c->dead)
		return c->dead;
	/* Reserved bits would make the daemon drop the connection: refuse them here. */
	for (size_t i = 0; i < n; i++)
		if (!entry_ok(type, &e[i]))
			return -EINVAL;

	while (done < n) {
		while (sent < n && (sent - done) / RDP_BATCH_MAX < PIPELINE_DEPTH) {
			uint32_t k = (uint32_t)(n - sent < RDP_BATCH_MAX ? n - sent : RDP_BATCH_MAX);
			uint32_t id = new_id(c);
			int r = send_chunk(c, type, e + sent, k, id);
			if (r < 0)
				return r;
			ids[(sent / RDP_BATCH_MAX) % PIPELINE_DEPTH] = id;
			sent += k;
		}
		int r = await(c, RDP_MSG_REPLY, ids[(done / RDP_BATCH_MAX) % PIPELINE_DEPTH]);
		if (r < 0)
			return r;
		uint32_t k = (uint32_t)(n - done < RDP_BATCH_MAX ? n - done : RDP_BATCH_MAX);
		if (c->rx_hdr.count != k)
			return fail(c, -EPROTO);
		for (uint32_t i = 0; i < k; i++) {
			uint32_t st = rdp_status_get(c->rx, i);
			e[done + i].status = st == 0 ? 0 : st < 4096 ? -(int)st : -EIO;
			nok += st == 0;
		}
		done += k;
	}
	if ((type == RDP_MSG_DEL || type == RDP_MSG_MOD) && nok > 0 && c->evq_len > 0) {
		int r = apply_to_queued(c, type, e, n);
		if (r < 0)
			return r;
	}
	return (int)nok;
}

int rd_add_batch(rd_client *c, struct rd_entry *e, size_t n)
{
	return batch(c, RDP_MSG_ADD, e, n);
}

int rd_modify_batch(rd_client *c, struct rd_entry *e, size_t n)
{
	return batch(c, RDP_MSG_MOD, e, n);
}

int rd_delete_batch(rd_client *c, struct rd_entry *e, size_t n)
{
	return batch(c, RDP_MSG_DEL, e, n);
}

int rd_rearm_batch(rd_client *c, struct rd_entry *e, size_t n)
{
	return batch(c, RDP_MSG_REARM, e, n);
}

static int single(rd_client *c, uint16_t type, int fd, uint64_t token, uint32_t interest,
		  uint32_t flags)
{
	struct rd_entry e = { .fd = fd, .token = token, .interest = interest, .flags = flags };
	int r = batch(c, type, &e, 1);
	return r < 0 ? r : e.status;
}

int rd_add(rd_client *c, int fd, uint64_t token, uint32_t interest, uint32_t flags)
{
	return single(c, RDP_MSG_ADD, fd, token, interest, flags);
}

int rd_modify(rd_client *c, uint64_t token, uint32_t interest, uint32_t flags)
{
	return single(c, RDP_MSG_MOD, -1, token, interest, flags);
}

int rd_delete(rd_client *c, uint64_t token)
{
	return single(c, RDP_MSG_DEL, -1, token, 0, 0);
}

int rd_rearm(rd_client *c, uint64_t token)
{
	return single(c, RDP_MSG_REARM, -1, token, 0, 0);
}

static size_t take_queued(rd_client *c, struct rd_event *ev, size_t max)
{
	size_t n = c->evq_len < max ? c->evq_len : max;
	memcpy(ev, c->evq + c->evq_head, n * sizeof(*ev));
	c->evq_head += n;
	c->evq_len -= n;
	if (c->evq_len == 0)
		c->evq_head = 0;
	return n;
}

int rd_wait(rd_client *c, struct rd_event *ev, size_t max, int timeout_ms)
{
	if (!c || (!ev && max) || max > INT32_MAX)
		return -EINVAL;
	if (max == 0)
		return 0;
	if (c->evq_len > 0)
		return (int)take_queued(c, ev, max);
	if (c->dead)
		return c->dead;
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	for (;;) {
		int left = timeout_ms;
		if (timeout_ms > 0) {
			int64_t l = deadline - now_ms();
			left = l > 0 ? (int)l : 0;
		}
		int r = recv_msg(c, left);
		if (r <= 0)
			return r;
		if (c->rx_hdr.type != RDP_MSG_EVENTS)
			return fail(c, -EPROTO); /* an answer nobody asked for */
		r = keep_events(c);
		if (r < 0)
			return r;
		return (int)take_queued(c, ev, max);
	}
}

int rd_control(rd_client *c, const char *request, char **reply)
{
	if (!c || !request || !reply)
		return -EINVAL;
	if (c->dead)
		return c->dead;
	size_t rl = strlen(request);
	if (rl == 0 || rl > RDP_MSG_MAX - RDP_HDR_SIZE)
		return -EMSGSIZE;
	uint32_t id = new_id(c);
	size_t len = rdp_encode_json(c->tx, sizeof(c->tx), RDP_MSG_CONTROL, id, request, rl);
	int r = rdp_send(c->fd, c->tx, len, NULL, 0, false);
	if (r < 0)
		return fail(c, r);
	r = await(c, RDP_MSG_CONTROL_REPLY, id);
	if (r < 0)
		return r;
	size_t jl = c->rx_len - RDP_HDR_SIZE;
	char *s = malloc(jl + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, c->rx + RDP_HDR_SIZE, jl);
	s[jl] = '\0';
	*reply = s;
	return 0;
}
