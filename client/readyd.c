/* libreadyd: the client side of the readyd protocol (see readyd.h and libreadyd(3)).
 * Requests are synchronous: a call sends its requests and reads until their replies
 * arrive. EVENTS that arrive meanwhile are kept, in order, for the next rd_wait. */
#include "readyd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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

/* Restarts one call lives through before it gives up with -ECONNRESET: a daemon that
 * drops the connection on every try of a request must not loop the caller forever. */
#define RESTARTS_PER_CALL 3

/* What the library knows it registered, to replay after the daemon restarted. The fd
 * is the caller's own (see libreadyd(3): keep it open while it is registered). */
struct model_entry {
	uint64_t token;
	int fd; /* -1: empty slot */
	uint32_t interest;
	uint32_t flags;
	char group[RDP_GROUP_NAME_SIZE + 1]; /* "" when in no group */
};

struct rd_client {
	int fd;
	int dead;          /* 0, or the -errno every call now returns */
	char *path;        /* connected by path: reconnect there if the daemon goes away */
	bool resync;       /* the daemon keeps this connection across its crashes */
	bool recovering;   /* inside resync(): a new loss restarts it instead of nesting */
	struct model_entry *model; /* open addressing by token */
	size_t model_cap, model_len;
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

/* Wait for the connection to become readable (POLLIN) or writable (POLLOUT), up to
 * timeout_ms (-1: forever). Returns 1 when it is, 0 on timeout or signal, or -errno.
 * Needed only for a finite timeout, or when the caller made the connection non-blocking. */
static int wait_fd(rd_client *c, short events, int timeout_ms)
{
	struct pollfd p = { .fd = c->fd, .events = events };
	struct timespec ts = { .tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000L };
	int r = ppoll(&p, 1, timeout_ms < 0 ? NULL : &ts, NULL);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	return r;
}

/* Check the message in c->rx; an ERROR ends the connection with the errno it carries. */
static int take_msg(rd_client *c, struct rdp_rx *rx)
{
	if (rx->nfds > 0 || rx->truncated || rx->ctruncated) {
		rdp_rx_close_fds(rx);
		return fail(c, -EPROTO);
	}
	if (rdp_check_daemon_msg(c->rx, rx->len, 0, &c->rx_hdr) != RDP_E_NONE)
		return fail(c, -EPROTO);
	c->rx_len = rx->len;
	if (c->rx_hdr.type == RDP_MSG_ERROR) {
		uint32_t err, reason;
		const char *text;
		size_t tl;
		rdp_error_get(c->rx, c->rx_len, &err, &reason, &text, &tl);
		return fail(c, err > 0 && err < 4096 ? -(int)err : -EPROTO);
	}
	return 1;
}

static int keep_events(rd_client *c);

/* The daemon hung up. It may have said why first (an ERROR still queued behind the
 * error the kernel reports): read what is left, so the caller learns the reason. */
static int conn_lost(rd_client *c, int err)
{
	for (int i = 0; i < 64 && !c->dead; i++) {
		struct rdp_rx rx;
		int r = rdp_recv_nofds(c->fd, c->rx, sizeof(c->rx), &rx, true);
		if (r <= 0)
			break;
		r = take_msg(c, &rx);
		if (r > 0 && c->rx_hdr.type == RDP_MSG_EVENTS)
			(void)keep_events(c);
	}
	return fail(c, err);
}

/* Send one request, waiting for room when the caller made the socket non-blocking.
 * Errors after which the connection is intact (nothing was sent) are returned as they
 * are: -EBADF (a bad fd in an ADD), -ETOOMANYREFS (too many of our fds in flight). */
static int send_msg(rd_client *c, const void *buf, size_t len, const int *fds, size_t nfds)
{
	if (c->dead)
		return c->dead;
	for (;;) {
		int r = rdp_send(c->fd, buf, len, fds, nfds, false);
		if (r == -EAGAIN) {
			r = wait_fd(c, POLLOUT, -1);
			if (r < 0)
				return fail(c, r);
			continue;
		}
		if (r == -EPIPE || r == -ECONNRESET)
			return conn_lost(c, r);
		if (r < 0 && r != -EBADF && r != -ETOOMANYREFS)
			return fail(c, r);
		return r;
	}
}

/* Receive one message from the daemon into c->rx, waiting up to timeout_ms (-1: block).
 * Returns 1 with a checked message, 0 on timeout, or -errno. */
static int recv_msg(rd_client *c, int timeout_ms)
{
	struct rdp_rx rx;
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;

	if (c->dead)
		return c->dead;
	for (;;) {
		/* Blocking receive when there is no timeout: no ppoll needed then. */
		int r = rdp_recv_nofds(c->fd, c->rx, sizeof(c->rx), &rx, timeout_ms >= 0);
		if (r == -EAGAIN) {
			int left = -1;
			if (timeout_ms == 0)
				return 0;
			if (timeout_ms > 0) {
				int64_t l = deadline - now_ms();
				if (l <= 0)
					return 0;
				left = (int)l;
			}
			r = wait_fd(c, POLLIN, left);
			if (r < 0)
				return fail(c, r);
			continue;
		}
		if (r == -ECONNRESET)
			return conn_lost(c, r);
		if (r < 0)
			return fail(c, r);
		if (r == 0)
			return fail(c, -ECONNRESET);
		return take_msg(c, &rx);
	}
}

/* Keep the records of the EVENTS message in c->rx for rd_wait. */
static int keep_events_from(rd_client *c, uint32_t first)
{
	for (uint32_t i = first; i < c->rx_hdr.count; i++) {
		struct rdp_event e;
		rdp_event_get(c->rx, i, &e);
		struct rd_event ev = { .token = e.token, .ready = e.ready, .tick = e.tick };
		if (evq_push(c, &ev) < 0)
			return fail(c, -ENOMEM);
	}
	return 0;
}

static int keep_events(rd_client *c)
{
	return keep_events_from(c, 0);
}

static int resync(rd_client *c, bool reconnect);

/* The connection ended without an ERROR (the daemon crashed or stopped): a client
 * connected by path reconnects and replays. Returns -ERESTART when it did. */
static int lost(rd_client *c, int r)
{
	if ((r == -ECONNRESET || r == -EPIPE) && c->path && c->fd >= 0)
		return c->recovering ? -ERESTART : resync(c, true);
	return r;
}

/* Read until the answer of type 'type' to request 'id' is in c->rx. Answers come in
 * request order, so any other answer is a protocol violation. */
static int await(rd_client *c, uint16_t type, uint32_t id)
{
	for (;;) {
		int r = recv_msg(c, -1);
		if (r < 0)
			return lost(c, r);
		if (c->rx_hdr.type == RDP_MSG_EVENTS) {
			r = keep_events(c);
			if (r < 0)
				return r;
			continue;
		}
		if (c->rx_hdr.type == RDP_MSG_RESYNC)
			return c->recovering ? -ERESTART : resync(c, false);
		if (c->rx_hdr.type != type || c->rx_hdr.id != id)
			return fail(c, -EPROTO);
		return 0;
	}
}

/* HELLO, offering RESYNC, and WELCOME. */
static int hello(rd_client *c)
{
	uint32_t id = new_id(c);
	size_t len = rdp_encode_hello(c->tx, sizeof(c->tx), id, RDP_VERSION, RDP_FEATURE_RESYNC);
	int r = send_msg(c, c->tx, len, NULL, 0);
	if (r == 0)
		r = await(c, RDP_MSG_WELCOME, id);
	if (r < 0)
		return r;
	struct rdp_welcome w;
	rdp_welcome_get(c->rx, &w);
	if (w.version != RDP_VERSION)
		return -EPROTONOSUPPORT;
	c->resync = (w.features & RDP_FEATURE_RESYNC) != 0;
	return 0;
}

int rd_adopt(rd_client **out, int fd)
{
	if (!out || fd < 0)
		return -EINVAL;
	rd_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	int r = hello(c);
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
	(*out)->path = strdup(path); /* without it (no memory), no reconnecting: that is all */
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
	free(c->model);
	free(c->path);
	free(c);
}

int rd_fd(const rd_client *c)
{
	return c ? c->fd : -EINVAL;
}

/* ---- the model: token -> (fd, interest, flags), linear probing, backward-shift delete */

static size_t model_home(const rd_client *c, uint64_t token)
{
	return (size_t)((token * 0x9e3779b97f4a7c15ull) >> 32) & (c->model_cap - 1);
}

static struct model_entry *model_find(rd_client *c, uint64_t token)
{
	if (!c->model_cap)
		return NULL;
	for (size_t i = model_home(c, token);; i = (i + 1) & (c->model_cap - 1)) {
		if (c->model[i].fd < 0)
			return NULL;
		if (c->model[i].token == token)
			return &c->model[i];
	}
}

static int model_put(rd_client *c, uint64_t token, int fd, uint32_t interest, uint32_t flags)
{
	struct model_entry *m = model_find(c, token);
	if (m) {
		/* Only the replay after a restart adds a token the model holds (the daemon
		 * refuses a second ADD with EEXIST): it keeps its group, to join again. */
		m->fd = fd;
		m->interest = interest;
		m->flags = flags;
		return 0;
	}
	if ((c->model_len + 1) * 2 > c->model_cap) {
		size_t ncap = c->model_cap ? c->model_cap * 2 : 64;
		struct model_entry *n = malloc(ncap * sizeof(*n)), *old = c->model;
		size_t ocap = c->model_cap;
		if (!n)
			return -ENOMEM;
		for (size_t i = 0; i < ncap; i++)
			n[i].fd = -1;
		c->model = n;
		c->model_cap = ncap;
		for (size_t i = 0; i < ocap; i++)
			if (old[i].fd >= 0) {
				size_t k = model_home(c, old[i].token);
				while (n[k].fd >= 0)
					k = (k + 1) & (ncap - 1);
				n[k] = old[i];
			}
		free(old);
	}
	size_t k = model_home(c, token);
	while (c->model[k].fd >= 0)
		k = (k + 1) & (c->model_cap - 1);
	c->model[k] = (struct model_entry){ token, fd, interest, flags, "" };
	c->model_len++;
	return 0;
}

static void model_del(rd_client *c, uint64_t token)
{
	struct model_entry *m = model_find(c, token);
	if (!m)
		return;
	size_t mask = c->model_cap - 1, hole = (size_t)(m - c->model);
	for (size_t j = (hole + 1) & mask; c->model[j].fd >= 0; j = (j + 1) & mask) {
		size_t home = model_home(c, c->model[j].token);
		if (((j - home) & mask) >= ((j - hole) & mask)) {
			c->model[hole] = c->model[j];
			hole = j;
		}
	}
	c->model[hole].fd = -1;
	c->model_len--;
}

/* Keep the model in step with a batch's answered entries. */
static int model_apply(rd_client *c, uint16_t type, const struct rd_entry *e)
{
	switch (type) {
	case RDP_MSG_ADD:
		return model_put(c, e->token, e->fd, e->interest, e->flags);
	case RDP_MSG_MOD: {
		struct model_entry *m = model_find(c, e->token);
		if (m) {
			m->interest = e->interest;
			m->flags = e->flags;
		}
		return 0;
	}
	case RDP_MSG_DEL:
		model_del(c, e->token);
		return 0;
	}
	return 0;
}

/* One JOIN request and its reply. Returns the entry's status, or a connection error. */
static int await(rd_client *c, uint16_t type, uint32_t id);
static int revive(rd_client *c);
static int join_raw(rd_client *c, uint64_t token, const char *group)
{
	const char *names[1] = { group };
	uint32_t id = new_id(c);
	size_t len = rdp_encode_join(c->tx, sizeof(c->tx), id, &token, names, 1);
	if (!len)
		return -EINVAL;
	int r = send_msg(c, c->tx, len, NULL, 0);
	if (r < 0)
		return lost(c, r);
	r = await(c, RDP_MSG_REPLY, id);
	if (r < 0)
		return r;
	if (c->rx_hdr.count != 1)
		return fail(c, -EPROTO);
	uint32_t st = rdp_status_get(c->rx, 0);
	return st == 0 ? 0 : st < 4096 ? -(int)st : -EIO;
}

int rd_join(rd_client *c, uint64_t token, const char *group)
{
	if (!c || !group || !group[0] || strlen(group) > RDP_GROUP_NAME_SIZE)
		return -EINVAL;
	if (c->dead) {
		int r = revive(c);
		if (r < 0)
			return r;
	}
	int r, restarts = 0;
	do {
		if (restarts++ > RESTARTS_PER_CALL)
			return fail(c, -ECONNRESET);
		r = join_raw(c, token, group);
	} while (r == -ERESTART);
	if (r == 0) {
		struct model_entry *m = model_find(c, token);
		if (m)
			snprintf(m->group, sizeof(m->group), "%s", group);
	}
	return r;
}

/* ---- after the daemon restarted ---- */

#define RECONNECT_TRIES 10   /* 10 ms, doubling to 1 s between tries: about 4 s */
#define RESYNC_TRIES 5       /* the daemon may go away again while we replay */

static int batch(rd_client *c, uint16_t type, struct rd_entry *e, size_t n);

/* Connect to c->path again, on the same fd number (a poll loop watching rd_fd() keeps
 * working; an epoll watching it must add it again: epoll forgets a closed file). */
static int reconnect(rd_client *c)
{
	struct sockaddr_un sa;
	int salen = rdp_sockaddr(&sa, c->path);
	long delay_ms = 10;
	if (salen < 0)
		return salen;
	for (int i = 0; i < RECONNECT_TRIES; i++) {
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, (socklen_t)salen) == 0) {
			if (dup3(fd, c->fd, O_CLOEXEC) >= 0)
				close(fd);
			else {
				close(c->fd);
				c->fd = fd;
			}
			c->dead = 0;
			int r = hello(c);
			/* Accepted, then dropped (the daemon is still starting or stopping): that
			 * is one more failed try, not the end. */
			if (r != -ECONNRESET && r != -EPIPE && r != -ERESTART)
				return r;
		} else
			close(fd);
		if (i + 1 == RECONNECT_TRIES)
			break;
		struct timespec ts = { .tv_sec = delay_ms / 1000, .tv_nsec = delay_ms % 1000 * 1000000L };
		nanosleep(&ts, NULL);
		delay_ms = delay_ms * 2 > 1000 ? 1000 : delay_ms * 2;
	}
	return fail(c, -ECONNRESET);
}

/* The daemon holds nothing of ours any more (it said RESYNC, or we reconnected): put
 * every registration back, then report each token ready once, so the caller looks at
 * each fd again (readiness that arose meanwhile is not lost, at worst it is spurious).
 * A token whose fd can no longer be registered is reported with RD_ERROR and forgotten.
 * Returns -ERESTART: the caller's requests in flight must be sent again. */
static int resync(rd_client *c, bool reconnect_first)
{
	int r = 0;
	c->recovering = true;
	for (int attempt = 0; attempt < RESYNC_TRIES; attempt++) {
		if (reconnect_first) {
			r = reconnect(c);
			if (r < 0)
				break;
		} else {
			uint8_t ack[RDP_HDR_SIZE];
			rdp_batch_begin(ack, RDP_MSG_RESYNC_ACK, 0);
			r = send_msg(c, ack, sizeof(ack), NULL, 0);
			if (r < 0) {
				reconnect_first = c->path != NULL;
				if (reconnect_first)
					continue;
				break;
			}
		}
		struct rd_entry *e = malloc((c->model_len ? c->model_len : 1) * sizeof(*e));
		size_t n = 0;
		if (!e) {
			r = -ENOMEM;
			break;
		}
		for (size_t i = 0; i < c->model_cap; i++)
			if (c->model[i].fd >= 0)
				e[n++] = (struct rd_entry){ .fd = c->model[i].fd, .token = c->model[i].token,
							    .interest = c->model[i].interest,
							    .flags = c->model[i].flags };
		r = n ? batch(c, RDP_MSG_ADD, e, n) : 0;
		if (r == -ERESTART || (r < 0 && c->path && (r == -ECONNRESET || r == -EPIPE))) {
			/* Gone again while we replayed: start over. */
			free(e);
			reconnect_first = r != -ERESTART || c->rx_hdr.type != RDP_MSG_RESYNC;
			c->dead = 0;
			continue;
		}
		for (size_t i = 0; r >= 0 && i < n; i++) {
			struct rd_event ev = { .token = e[i].token, .ready = e[i].interest };
			struct model_entry *m = model_find(c, e[i].token);
			if (e[i].status == 0 && m && m->group[0]) {
				/* Back into its group, under the same name. */
				char name[sizeof(m->group)];
				memcpy(name, m->group, sizeof(name));
				int jr = join_raw(c, e[i].token, name);
				if (jr == -ERESTART || jr == -ECONNRESET || jr == -EPIPE) {
					r = -ERESTART;
					break;
				}
				if ((m = model_find(c, e[i].token)))
					memcpy(m->group, name, sizeof(name));
			}
			if (e[i].status < 0) {
				model_del(c, e[i].token);
				ev.ready = RD_ERROR;
			}
			if (evq_push(c, &ev) < 0)
				r = -ENOMEM;
		}
		if (r == -ERESTART) {
			free(e);
			reconnect_first = c->rx_hdr.type != RDP_MSG_RESYNC;
			c->dead = 0;
			continue;
		}
		free(e);
		break;
	}
	c->recovering = false;
	if (r == -ERESTART) /* still restarting after every try */
		r = -ECONNRESET;
	if (r < 0)
		return fail(c, r);
	return -ERESTART;
}

/* A call on a connection that was lost: one more try to get it back. */
static int revive(rd_client *c)
{
	if ((c->dead != -ECONNRESET && c->dead != -EPIPE) || !c->path)
		return c->dead;
	int r = resync(c, true);
	return r == -ERESTART ? 0 : r;
}

/* One request of a batched call: its id and which entries it carries. */
struct chunk {
	uint32_t id;
	uint32_t n;
	uint32_t idx[RDP_BATCH_MAX];
};

/* Encode the entries named by ch->idx as one request of 'type' and send it. */
static int send_chunk(rd_client *c, uint16_t type, const struct rd_entry *e, const struct chunk *ch)
{
	struct rdp_add_entry ae[RDP_BATCH_MAX];
	uint64_t tok[RDP_BATCH_MAX];
	int fds[RDP_BATCH_MAX];
	size_t len;

	for (uint32_t i = 0; i < ch->n; i++) {
		const struct rd_entry *x = &e[ch->idx[i]];
		ae[i] = (struct rdp_add_entry){ .token = x->token, .interest = x->interest,
						.flags = x->flags };
		tok[i] = x->token;
		fds[i] = x->fd;
	}
	switch (type) {
	case RDP_MSG_ADD:
		len = rdp_encode_add(c->tx, sizeof(c->tx), ch->id, ae, ch->n);
		break;
	case RDP_MSG_MOD:
		len = rdp_encode_mod(c->tx, sizeof(c->tx), ch->id, ae, ch->n);
		break;
	default:
		len = rdp_encode_tokens(c->tx, sizeof(c->tx), type, ch->id, tok, ch->n);
		break;
	}
	return send_msg(c, c->tx, len, fds, type == RDP_MSG_ADD ? ch->n : 0);
}

/* An entry the daemon would refuse as malformed gets its status here and is not sent:
 * reserved bits would cost the whole connection. */
static int entry_check(uint16_t type, const struct rd_entry *e)
{
	if (type == RDP_MSG_ADD && e->fd < 0)
		return -EBADF;
	if ((type == RDP_MSG_ADD || type == RDP_MSG_MOD) &&
	    ((e->interest & ~RDP_INTEREST_ALL) || (e->flags & ~RDP_FLAG_ALL)))
		return -EINVAL;
	return 0;
}

/* Fill ch with up to 253 sendable entries from *next on; entries that cannot be sent get
 * their status now. */
static void chunk_fill(uint16_t type, struct rd_entry *e, size_t n, size_t *next, struct chunk *ch)
{
	ch->n = 0;
	while (*next < n && ch->n < RDP_BATCH_MAX) {
		struct rd_entry *x = &e[*next];
		x->status = entry_check(type, x);
		if (x->status == 0)
			ch->idx[ch->n++] = (uint32_t)*next;
		(*next)++;
	}
}

/* sendmsg said EBADF: find the closed fds (only on this rare path), give them -EBADF,
 * and keep the rest of the request. Returns false when every fd is fine: then the bad
 * fd is the connection itself. */
static bool chunk_drop_bad_fds(struct rd_entry *e, struct chunk *ch)
{
	uint32_t before = ch->n;
	uint32_t w = 0;
	for (uint32_t i = 0; i < ch->n; i++) {
		struct rd_entry *x = &e[ch->idx[i]];
		if (fcntl(x->fd, F_GETFD) < 0)
			x->status = -EBADF;
		else
			ch->idx[w++] = ch->idx[i];
	}
	ch->n = w;
	return w < before;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Events received before a DEL or MOD reply may still wait in evq: drop them, for the
 * tokens of that request alone, as its reply is read. After a DEL nothing more comes for
 * the token; after a MOD the daemon polls the fd again and reports what is ready under
 * the new interest and mode, so what came before would only be delivered twice (a
 * oneshot would see a stale event, then its real one). Events that arrive after the
 * reply are the new ones, even while later requests of the same call are in flight:
 * they stay. No allocation and no qsort (which may call sysinfo): a request has at most
 * 253 tokens, sorted by insertion. */
static void drop_queued(rd_client *c, const struct rd_entry *e, const struct chunk *ch)
{
	uint64_t tok[RDP_BATCH_MAX];
	size_t nt = 0;

	for (uint32_t i = 0; i < ch->n; i++) {
		if (e[ch->idx[i]].status != 0)
			continue;
		uint64_t t = e[ch->idx[i]].token;
		size_t k = nt++;
		for (; k > 0 && tok[k - 1] > t; k--)
			tok[k] = tok[k - 1];
		tok[k] = t;
	}
	size_t w = 0;
	for (size_t i = 0; i < c->evq_len; i++) {
		struct rd_event ev = c->evq[c->evq_head + i];
		if (!bsearch(&ev.token, tok, nt, sizeof(*tok), cmp_u64))
			c->evq[c->evq_head + w++] = ev;
	}
	c->evq_len = w;
}

/* The connection failed with err while a batch had 'inflight' requests out (from
 * fl[head]), or err is -ERESTART: the daemon restarted and our registrations are back.
 * Send those requests again, in order; if the daemon goes away again meanwhile, start
 * over, within the call's budget of restarts. Returns 0, or what the call returns. */
static int restart(rd_client *c, uint16_t type, const struct rd_entry *e, struct chunk *fl,
		   unsigned head, unsigned inflight, int err, unsigned *restarts)
{
	for (;;) {
		int r = err == -ERESTART ? err : lost(c, err);
		if (r != -ERESTART || c->recovering)
			return r < 0 ? r : fail(c, -EIO);
		if (++*restarts > RESTARTS_PER_CALL)
			return fail(c, -ECONNRESET);
		err = 0;
		for (unsigned k = 0; k < inflight && !err; k++) {
			struct chunk *again = &fl[(head + k) % PIPELINE_DEPTH];
			again->id = new_id(c);
			err = send_chunk(c, type, e, again);
		}
		if (!err)
			return 0;
		if (err != -ECONNRESET && err != -EPIPE)
			return fail(c, err);
	}
}

/* A batched call: requests of up to 253 entries, up to PIPELINE_DEPTH in flight. */
static int batch(rd_client *c, uint16_t type, struct rd_entry *e, size_t n)
{
	struct chunk fl[PIPELINE_DEPTH];
	unsigned head = 0, inflight = 0, restarts = 0;
	size_t next = 0, nok = 0;

	if (!c || (!e && n))
		return -EINVAL;
	if (c->dead && !c->recovering) {
		int r = revive(c);
		if (r < 0)
			return r;
	}

	while (next < n || inflight > 0) {
		while (next < n && inflight < PIPELINE_DEPTH) {
			struct chunk *ch = &fl[(head + inflight) % PIPELINE_DEPTH];
			size_t start = next;
			chunk_fill(type, e, n, &next, ch);
			ch->id = new_id(c);
			int r = ch->n ? send_chunk(c, type, e, ch) : 0;
			while (r == -EBADF && type == RDP_MSG_ADD && chunk_drop_bad_fds(e, ch))
				r = ch->n ? send_chunk(c, type, e, ch) : 0;
			if (r == -ETOOMANYREFS) {
				/* More of our fds in flight than RLIMIT_NOFILE allows: let the
				 * daemon take what is sent, then retry. Alone, it cannot go. */
				if (inflight > 0) {
					next = start;
					break;
				}
				for (uint32_t i = 0; i < ch->n; i++)
					e[ch->idx[i]].status = -ETOOMANYREFS;
				continue;
			}
			if (r < 0) {
				/* Back after a restart: what was in flight goes again, then this. */
				r = restart(c, type, e, fl, head, inflight, r, &restarts);
				if (r < 0)
					return r;
				next = start;
				continue;
			}
			if (ch->n)
				inflight++;
		}
		if (inflight == 0)
			break;
		struct chunk *ch = &fl[head];
		int r = await(c, RDP_MSG_REPLY, ch->id);
		if (r == -ERESTART && c->recovering)
			return r; /* resync() starts over */
		if (r == -ERESTART) {
			/* The daemon restarted and our registrations are back: the requests in
			 * flight were never seen by it. Send them again, in order. */
			r = restart(c, type, e, fl, head, inflight, r, &restarts);
			if (r < 0)
				return r;
			continue;
		}
		if (r < 0)
			return r;
		if (c->rx_hdr.count != ch->n)
			return fail(c, -EPROTO);
		for (uint32_t i = 0; i < ch->n; i++) {
			uint32_t st = rdp_status_get(c->rx, i);
			e[ch->idx[i]].status = st == 0 ? 0 : st < 4096 ? -(int)st : -EIO;
			nok += st == 0;
			if (st == 0 && model_apply(c, type, &e[ch->idx[i]]) < 0)
				return fail(c, -ENOMEM);
		}
		if ((type == RDP_MSG_DEL || type == RDP_MSG_MOD) && c->evq_len > 0)
			drop_queued(c, e, ch);
		head = (head + 1) % PIPELINE_DEPTH;
		inflight--;
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
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	for (;;) {
		if (c->evq_len > 0)
			return (int)take_queued(c, ev, max);
		int left = timeout_ms;
		if (timeout_ms > 0) {
			int64_t l = deadline - now_ms();
			left = l > 0 ? (int)l : 0;
		}
		int r;
		if (c->dead) {
			r = revive(c);
			if (r < 0)
				return r;
		} else {
			r = recv_msg(c, left);
			if (r < 0) {
				r = lost(c, r);
				if (r != -ERESTART)
					return r;
			} else if (r == 0) {
				return 0;
			} else if (c->rx_hdr.type == RDP_MSG_RESYNC) {
				r = resync(c, false);
				if (r != -ERESTART)
					return r;
			} else if (c->rx_hdr.type != RDP_MSG_EVENTS) {
				return fail(c, -EPROTO); /* an answer nobody asked for */
			} else {
				/* Straight into the caller's array; only what does not fit is kept. */
				uint32_t n = c->rx_hdr.count < max ? c->rx_hdr.count : (uint32_t)max;
				for (uint32_t i = 0; i < n; i++) {
					struct rdp_event e;
					rdp_event_get(c->rx, i, &e);
					ev[i] = (struct rd_event){ .token = e.token, .ready = e.ready,
								   .tick = e.tick };
				}
				r = keep_events_from(c, n);
				return r < 0 ? r : (int)n;
			}
		}
		/* Recovered. Its "ready once" events are queued, unless nothing was
		 * registered: then wait on, for what is left of the timeout. */
		if (c->evq_len == 0 && (timeout_ms == 0 || (timeout_ms > 0 && now_ms() >= deadline)))
			return 0;
	}
}

int rd_control(rd_client *c, const char *request, char **reply)
{
	if (!c || !request || !reply)
		return -EINVAL;
	if (c->dead) {
		int r = revive(c);
		if (r < 0)
			return r;
	}
	size_t rl = strlen(request);
	if (rl == 0 || rl > RDP_MSG_MAX - RDP_HDR_SIZE)
		return -EMSGSIZE;
	int r, restarts = 0;
	uint32_t id;
	do {
		if (restarts++ > RESTARTS_PER_CALL)
			return fail(c, -ECONNRESET);
		/* A restart in between voids the request: it is sent again. */
		id = new_id(c);
		size_t len = rdp_encode_json(c->tx, sizeof(c->tx), RDP_MSG_CONTROL, id, request, rl);
		r = send_msg(c, c->tx, len, NULL, 0);
		if (r < 0)
			r = lost(c, r);
		else
			r = await(c, RDP_MSG_CONTROL_REPLY, id);
	} while (r == -ERESTART);
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
