/* One client connection: reading and answering its requests, owning its registrations,
 * and delivering its ready queue as EVENTS batches. Every fd a request brings is either
 * kept by a registration or closed before the request's reply is queued. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "../proto/rdp_io.h"
#include "log.h"
#include "rdd.h"

uint8_t rdd_rxbuf[RDP_MSG_MAX];
uint8_t rdd_txbuf[RDP_MSG_MAX];

/* Readiness reported whatever the interest. */
#define READY_ALWAYS (RDP_READY_READ_CLOSED | RDP_READY_WRITE_CLOSED | RDP_READY_ERROR)

static uint32_t epoll_events_for(uint8_t interest, uint8_t flags)
{
	uint32_t ev = EPOLLRDHUP;
	if (interest & RDP_INTEREST_READABLE)
		ev |= EPOLLIN;
	if (interest & RDP_INTEREST_WRITABLE)
		ev |= EPOLLOUT;
	if (interest & RDP_INTEREST_PRIORITY)
		ev |= EPOLLPRI;
	/* Oneshot is level-triggered and disarmed after one report, so re-arming an fd
	 * that is still ready reports it at once. */
	ev |= (flags & RDP_FLAG_ONESHOT) ? EPOLLONESHOT : EPOLLET;
	return ev;
}

uint32_t rdd_reg_epoll_events(const struct rdd_reg *r)
{
	/* A delivered oneshot registration not re-armed yet: only private bits, which epoll
	 * never reports (how the kernel itself disarms EPOLLONESHOT). */
	if (r->state & RDD_REG_DISARMED)
		return EPOLLONESHOT;
	return epoll_events_for(r->interest, r->flags);
}

/* mio's mapping of epoll bits to readiness. */
static uint8_t ready_from_epoll(uint32_t e)
{
	uint8_t r = 0;
	if (e & EPOLLIN)
		r |= RDP_READY_READABLE;
	if (e & EPOLLOUT)
		r |= RDP_READY_WRITABLE;
	if (e & EPOLLPRI)
		r |= RDP_READY_PRIORITY;
	if (e & (EPOLLRDHUP | EPOLLHUP))
		r |= RDP_READY_READ_CLOSED;
	if (e & (EPOLLHUP | EPOLLERR))
		r |= RDP_READY_WRITE_CLOSED;
	if (e & EPOLLERR)
		r |= RDP_READY_ERROR;
	return r;
}

static struct rdd_uid_count *uid_slot(struct rdd *d, uid_t uid, bool create)
{
	for (uint32_t i = 0; i < d->nuids; i++)
		if (d->uids[i].uid == uid)
			return &d->uids[i];
	if (!create)
		return NULL;
	struct rdd_uid_count *n = realloc(d->uids, (d->nuids + 1) * sizeof(*n));
	if (!n)
		return NULL;
	d->uids = n;
	n[d->nuids] = (struct rdd_uid_count){ .uid = uid };
	return &n[d->nuids++];
}

/* Per uid too, so one user at its cap leaves room for the others; the policy's admins
 * (root and the daemon's own uid by default) are trusted with all of it. */
static bool at_quota(struct rdd *d, const struct rdd_uid_count *u, uid_t uid)
{
	return u && u->regs >= d->lim.regs_per_uid && !rdd_is_admin(d, uid);
}

bool rdd_uid_at_quota(struct rdd *d, uid_t uid)
{
	return at_quota(d, uid_slot(d, uid, false), uid);
}

bool rdd_uid_charge(struct rdd *d, uid_t uid)
{
	struct rdd_uid_count *u = uid_slot(d, uid, false);
	if (u)
		u->regs++;
	return u != NULL;
}

void rdd_uid_give_back(struct rdd *d, uid_t uid)
{
	struct rdd_uid_count *u = uid_slot(d, uid, false);
	if (u && u->regs)
		u->regs--;
}

void rdd_client_mark(struct rdd *d, struct rdd_client *c)
{
	if (c->on_dirty)
		return;
	struct rdd_worklist *w = &d->dirty;
	if (w->n == w->cap) {
		uint32_t ncap = w->cap ? w->cap * 2 : 64;
		uint64_t *n = realloc(w->v, ncap * sizeof(*n));
		if (!n) {
			/* Not listed: an edge-triggered connection may bring no other event
			 * for it, so the loop looks at every client once instead. */
			log_warning("out of memory queueing work for client pid %d", (int)c->pid);
			d->dirty_overflow = true;
			return;
		}
		w->v = n;
		w->cap = ncap;
	}
	w->v[w->n++] = rdd_data(RDD_TAG_CLIENT, c->gen, c->slot);
	c->on_dirty = true;
}

static int set_out_interest(struct rdd *d, struct rdd_client *c, bool want)
{
	if (c->want_out == want)
		return 0;
	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want ? EPOLLOUT : 0),
		.data.u64 = rdd_data(RDD_TAG_CLIENT, c->gen, c->slot),
	};
	if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		return -errno;
	c->want_out = want;
	return 0;
}

/* The peer's command name, for the control plane. Best effort: /proc may be hidden. */
static void read_comm(struct rdd_client *c)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)c->pid);
	strcpy(c->comm, "?");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, c->comm, sizeof(c->comm) - 1);
	close(fd);
	if (n <= 0) {
		strcpy(c->comm, "?");
		return;
	}
	c->comm[n] = '\0';
	c->comm[strcspn(c->comm, "\n")] = '\0';
	/* Any byte: the process chose its name. Printable ASCII travels through JSON. */
	for (char *p = c->comm; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			*p = '?';
}

/* Make fd a client: a slot, epoll interest, the uid's count. On failure fd is left open
 * for the caller. Used for new connections and for those kept across an upgrade. */
int rdd_client_attach(struct rdd *d, int fd, const struct ucred *cred, struct rdd_client **out)
{
	struct rdd_client *c;
	int r;

	uint32_t slot = 0;
	while (slot < d->nclients_cap && d->clients[slot])
		slot++;
	if (slot == d->nclients_cap) {
		uint32_t ncap = d->nclients_cap ? d->nclients_cap * 2 : 16;
		struct rdd_client **nc = realloc(d->clients, ncap * sizeof(*nc));
		if (!nc)
			return -ENOMEM;
		d->clients = nc;
		uint32_t *ng = realloc(d->client_gen, ncap * sizeof(*ng));
		if (!ng)
			return -ENOMEM;
		d->client_gen = ng;
		for (uint32_t i = d->nclients_cap; i < ncap; i++) {
			nc[i] = NULL;
			ng[i] = 0;
		}
		d->nclients_cap = ncap;
	}

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->slot = slot;
	c->gen = d->client_gen[slot];
	c->pid = cred->pid;
	c->uid = cred->uid;
	c->gid = cred->gid;
	strcpy(c->comm, "?");
	rdd_tokmap_init(&c->map);
	rdd_queue_init(&c->ready);

	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
		.data.u64 = rdd_data(RDD_TAG_CLIENT, c->gen, slot),
	};
	/* The uid is counted from here on; created last so no failure leaves it behind. */
	struct rdd_uid_count *u = uid_slot(d, cred->uid, true);
	if (!u) {
		r = -ENOMEM;
		goto out_free;
	}
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		r = -errno;
		log_err("epoll_ctl ADD client: %s", strerror(-r));
		if (u->n == 0)
			*u = d->uids[--d->nuids];
		goto out_free;
	}
	d->clients[slot] = c;
	d->nclients++;
	d->nfds++;
	u->n++;
	*out = c;
	return 0;

out_free:
	free(c);
	return r;
}

/* One timer for every connection still owing its HELLO, one-shot, set to the earliest
 * deadline: a disarmed timerfd costs an idle daemon nothing. */
int rdd_handshake_init(struct rdd *d)
{
	int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = rdd_data(RDD_TAG_HANDSHAKE, 0, 0) };
	if (fd < 0)
		return -errno;
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	d->hs_timer_fd = fd;
	d->nfds++;
	return 0;
}

static void handshake_arm(struct rdd *d, uint64_t deadline_usec)
{
	struct itimerspec its = {
		.it_value = { .tv_sec = (time_t)(deadline_usec / 1000000u),
			      .tv_nsec = (long)(deadline_usec % 1000000u) * 1000 },
	};
	if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
		its.it_value.tv_nsec = 1;
	if (d->hs_timer_fd >= 0 && timerfd_settime(d->hs_timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		d->hs_armed = true;
}

void rdd_handshake_start(struct rdd *d, struct rdd_client *c)
{
	c->accepted_mono = rdd_now_usec(CLOCK_MONOTONIC);
	if (!d->hs_armed)
		handshake_arm(d, c->accepted_mono + (uint64_t)d->lim.handshake_ms * 1000u);
}

void rdd_handshake_expire(struct rdd *d)
{
	uint64_t n, now = rdd_now_usec(CLOCK_MONOTONIC), next = 0;
	while (read(d->hs_timer_fd, &n, sizeof(n)) > 0)
		;
	d->hs_armed = false;
	uint64_t limit = (uint64_t)d->lim.handshake_ms * 1000u;
	for (uint32_t i = 0; i < d->nclients_cap; i++) {
		struct rdd_client *c = d->clients[i];
		if (!c || c->hello_done)
			continue;
		uint64_t deadline = c->accepted_mono + limit;
		if (deadline <= now) {
			size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, ETIMEDOUT, RDP_E_TIMEOUT,
						      rdp_reason_str(RDP_E_TIMEOUT));
			(void)rdd_client_send(d, c, rdd_txbuf, len);
			log_notice("client pid %d uid %u: no HELLO within %u ms; disconnecting",
				   (int)c->pid, (unsigned)c->uid, d->lim.handshake_ms);
			rdd_client_close(d, c, "handshake timeout");
		} else if (!next || deadline < next)
			next = deadline;
	}
	if (next)
		handshake_arm(d, next);
}

int rdd_client_new(struct rdd *d, int fd)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct rdd_client *c = NULL;
	int r;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		r = -errno;
		log_warning("SO_PEERCRED on a new connection: %s", strerror(-r));
		goto out_close_fd;
	}
	if (!rdd_may_connect(d, fd, cred.uid, cred.gid)) {
		size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, EACCES, RDP_E_RESOURCE,
					      "the policy does not allow this user to connect");
		(void)rdp_send(fd, rdd_txbuf, len, NULL, 0, true);
		log_notice("refused pid %d uid %u: not allowed by the policy", (int)cred.pid,
			   (unsigned)cred.uid);
		r = -EACCES;
		goto out_close_fd;
	}
	struct rdd_uid_count *u = uid_slot(d, cred.uid, false);
	if (u && u->n >= d->lim.clients_per_uid) {
		char text[128];
		snprintf(text, sizeof(text), "too many connections for uid %u (limit %u)",
			 (unsigned)cred.uid, d->lim.clients_per_uid);
		size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, EUSERS, RDP_E_RESOURCE, text);
		(void)rdp_send(fd, rdd_txbuf, len, NULL, 0, true);
		log_notice("refused pid %d: %s", (int)cred.pid, text);
		r = -EUSERS;
		goto out_close_fd;
	}

	r = rdd_client_attach(d, fd, &cred, &c);
	if (r < 0)
		goto out_close_fd;
	rdd_handshake_start(d, c);
	c->connected_usec = rdd_now_usec(CLOCK_REALTIME);
	c->id = ++d->next_client_id;
	read_comm(c);
	log_debug("client pid %d uid %u connected (id %llu)", (int)c->pid, (unsigned)c->uid,
		  (unsigned long long)c->id);
	return 0;

out_close_fd:
	close(fd);
	return r;
}

/* Remove one registration: out of epoll first, then out of the queue and the map, then
 * close the daemon's copy. */
static void reg_destroy(struct rdd *d, struct rdd_client *c, uint32_t slot)
{
	struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
	if (r->state & RDD_REG_GROUPED)
		rdd_group_leave(d, slot); /* a member's own fd is not in epoll */
	else if (epoll_ctl(d->epfd, EPOLL_CTL_DEL, r->fd, NULL) < 0)
		log_debug("EPOLL_CTL_DEL token %llu: %s", (unsigned long long)r->token, strerror(errno));
	rdd_queue_remove(&c->ready, &d->slab, slot);
	rdd_tokmap_remove(&c->map, &d->slab, slot);
	close(r->fd);
	rdd_slab_free(&d->slab, slot);
	c->nregs--;
	d->nfds--;
	struct rdd_uid_count *u = uid_slot(d, c->uid, false);
	if (u && u->regs)
		u->regs--;
}

/* Every registration of c goes at once: walk the map, not the tokens. */
static void drop_registrations(struct rdd *d, struct rdd_client *c)
{
	for (uint32_t i = 0; c->map.slots && i <= c->map.mask; i++) {
		uint32_t slot = c->map.slots[i];
		if (slot == RDD_NIL)
			continue;
		struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
		if (r->state & RDD_REG_GROUPED)
			rdd_group_leave(d, slot);
		else if (epoll_ctl(d->epfd, EPOLL_CTL_DEL, r->fd, NULL) < 0)
			log_debug("EPOLL_CTL_DEL: %s", strerror(errno));
		close(r->fd);
		rdd_slab_free(&d->slab, slot);
		d->nfds--;
	}
	rdd_tokmap_fini(&c->map);
	rdd_queue_init(&c->ready);
	struct rdd_uid_count *u = uid_slot(d, c->uid, false);
	if (u)
		u->regs = u->regs > c->nregs ? u->regs - c->nregs : 0;
	c->nregs = 0;
}

void rdd_client_close(struct rdd *d, struct rdd_client *c, const char *why)
{
	log_debug("client pid %d uid %u: closing: %s", (int)c->pid, (unsigned)c->uid, why);
	rdd_notify_fdstore_remove(d, c);
	drop_registrations(d, c);
	if (epoll_ctl(d->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
		log_debug("EPOLL_CTL_DEL client: %s", strerror(errno));
	close(c->fd);
	d->nfds--;
	struct rdd_uid_count *u = uid_slot(d, c->uid, false);
	if (u && --u->n == 0)
		*u = d->uids[--d->nuids]; /* forget uids with no connection */
	d->clients[c->slot] = NULL;
	d->client_gen[c->slot] = (d->client_gen[c->slot] + 1) & RDD_GEN_MASK;
	d->nclients--;
	free(c->out);
	free(c);
	if (d->accept_paused)
		rdd_listen_resume(d);
}

static bool out_pending(const struct rdd_client *c);

/* Disconnect c with a reason it will read: its registrations go now, answers it had not
 * read are dropped, and the connection closes once the ERROR is out (a client that does
 * not read holds one socket until it does, or goes). */
void rdd_client_kick(struct rdd *d, struct rdd_client *c, uint32_t err, uint32_t reason)
{
	if (c->kicked)
		return; /* its ERROR is already waiting to go */
	/* Out of the fd store now, not when the ERROR is out: a crash meanwhile must not
	 * bring the connection back as a client to resync. */
	rdd_notify_fdstore_remove(d, c);
	drop_registrations(d, c);
	c->out_off = c->out_len = 0;
	c->in_pending = false;
	size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, err, reason, rdp_reason_str(reason));
	if (rdd_client_send(d, c, rdd_txbuf, len) < 0 || !out_pending(c)) {
		rdd_client_close(d, c, rdp_reason_str(reason));
		return;
	}
	c->kicked = true;
}

static bool out_pending(const struct rdd_client *c)
{
	return c->out_off < c->out_len;
}

static int out_append(struct rdd_client *c, const void *msg, size_t len)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_cap - c->out_len < len && c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_cap - c->out_len < len) {
		size_t ncap = c->out_cap ? c->out_cap : 4096;
		while (ncap - c->out_len < len)
			ncap *= 2;
		uint8_t *n = realloc(c->out, ncap);
		if (!n)
			return -ENOMEM;
		c->out = n;
		c->out_cap = ncap;
	}
	memcpy(c->out + c->out_len, msg, len);
	c->out_len += len;
	return 0;
}

int rdd_client_send(struct rdd *d, struct rdd_client *c, const void *msg, size_t len)
{
	if (!out_pending(c)) {
		int r = rdp_send(c->fd, msg, len, NULL, 0, true);
		if (r != -EAGAIN)
			return r;
		r = set_out_interest(d, c, true);
		if (r < 0)
			return r;
	}
	return out_append(c, msg, len);
}

/* Send queued output. Returns 0 when all is sent, 1 when blocked, -errno on failure. */
static int flush_out(struct rdd *d, struct rdd_client *c)
{
	while (out_pending(c)) {
		const uint8_t *p = c->out + c->out_off;
		size_t len = rdp_le32(p);
		int r = rdp_send(c->fd, p, len, NULL, 0, true);
		if (r == -EAGAIN)
			return set_out_interest(d, c, true) < 0 ? -EIO : 1;
		if (r < 0)
			return r;
		c->out_off += len;
	}
	c->out_off = c->out_len = 0;
	return 0;
}

/* Send up to 'budget' EVENTS packets from the ready queue. A record leaves the queue only
 * once its packet is sent; on EAGAIN everything stays queued and coalescing. Returns 0,
 * 1 when blocked, or -errno. */
static int flush_events(struct rdd *d, struct rdd_client *c, uint32_t budget)
{
	struct rdd_slab *s = &d->slab;

	while (budget-- > 0 && c->ready.len > 0) {
		uint32_t n = 0;
		rdp_batch_begin(rdd_txbuf, RDP_MSG_EVENTS, 0);
		for (uint32_t slot = c->ready.head; slot != RDD_NIL && n < RDP_EVENTS_MAX;
		     slot = s->regs[slot].qnext) {
			const struct rdd_reg *r = &s->regs[slot];
			struct rdp_event ev = { .token = r->token, .tick = r->tick, .ready = r->pending };
			rdp_event_set(rdd_txbuf, n++, &ev);
		}
		size_t len = rdp_batch_finish(rdd_txbuf, n);
		int r = rdp_send(c->fd, rdd_txbuf, len, NULL, 0, true);
		if (r == -EAGAIN)
			return set_out_interest(d, c, true) < 0 ? -EIO : 1;
		if (r < 0)
			return r;
		rdd_queue_deliver(&c->ready, s, n);
		c->events_delivered += n;
		d->events_delivered += n;
	}
	return 0;
}

/* A malformed request: say why, then disconnect this client alone. */
static void protocol_error(struct rdd *d, struct rdd_client *c, uint32_t id, uint32_t reason,
			   struct rdp_rx *rx)
{
	if (rx)
		rdp_rx_close_fds(rx);
	uint32_t err = reason == RDP_E_TOO_BIG ? EMSGSIZE : EPROTO;
	size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, id, err, reason, rdp_reason_str(reason));
	(void)rdd_client_send(d, c, rdd_txbuf, len);
	(void)flush_out(d, c);
	log_notice("client pid %d uid %u: protocol error: %s; disconnecting", (int)c->pid,
		   (unsigned)c->uid, rdp_reason_str(reason));
	rdd_client_close(d, c, rdp_reason_str(reason));
}

static uint32_t add_one(struct rdd *d, struct rdd_client *c, struct rdd_uid_count *u,
			const struct rdp_add_entry *e, int fd)
{
	uint32_t err, slot;

	if (e->interest == 0) {
		err = EINVAL;
		goto out_close_fd;
	}
	if (rdd_tokmap_find(&c->map, &d->slab, e->token) != RDD_NIL) {
		err = EEXIST;
		goto out_close_fd;
	}
	if (c->nregs >= d->lim.regs_per_client) {
		err = ENOSPC;
		goto out_close_fd;
	}
	if (at_quota(d, u, c->uid)) {
		err = EDQUOT;
		goto out_close_fd;
	}
	if (d->nfds >= d->lim.max_fds) {
		err = EMFILE;
		goto out_close_fd;
	}
	if (rdd_is_own_connection(d, fd)) {
		err = ELOOP; /* a connection to readyd watched by readyd never ends */
		goto out_close_fd;
	}
	if (rdd_slab_alloc(&d->slab, &slot) < 0) {
		err = ENOMEM;
		goto out_close_fd;
	}
	struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
	r->token = e->token;
	r->fd = fd;
	r->owner = c->slot;
	r->interest = (uint8_t)e->interest;
	r->flags = (uint8_t)e->flags;

	struct epoll_event ev = {
		.events = epoll_events_for(r->interest, r->flags),
		.data.u64 = rdd_data(RDD_TAG_REG, r->gen, slot),
	};
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		err = (uint32_t)errno;
		goto out_free_slot;
	}
	if (rdd_tokmap_insert(&c->map, &d->slab, slot) < 0) {
		err = ENOMEM;
		epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL);
		goto out_free_slot;
	}
	c->nregs++;
	d->nfds++;
	if (u)
		u->regs++;
	return 0;

out_free_slot:
	rdd_slab_free(&d->slab, slot);
out_close_fd:
	close(fd);
	return err;
}

static uint32_t mod_one(struct rdd *d, struct rdd_client *c, const struct rdp_add_entry *e)
{
	uint32_t slot = rdd_tokmap_find(&c->map, &d->slab, e->token);
	if (slot == RDD_NIL)
		return ENOENT;
	if (e->interest == 0)
		return EINVAL;
	struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
	if (r->state & RDD_REG_GROUPED)
		return EBUSY; /* a member keeps the group's interest and mode: delete it to change */
	struct epoll_event ev = {
		.events = epoll_events_for((uint8_t)e->interest, (uint8_t)e->flags),
		.data.u64 = rdd_data(RDD_TAG_REG, r->gen, slot),
	};
	if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, r->fd, &ev) < 0)
		return (uint32_t)errno;
	r->interest = (uint8_t)e->interest;
	r->flags = (uint8_t)e->flags;
	r->state &= (uint8_t)~RDD_REG_DISARMED;
	/* EPOLL_CTL_MOD polls the fd again and reports what is ready now, under the new
	 * interest and mode: readiness held from before is dropped, not delivered twice
	 * (a oneshot would otherwise see a stale event and then its real one). */
	r->pending = 0;
	rdd_queue_remove(&c->ready, &d->slab, slot);
	return 0;
}

static uint32_t del_one(struct rdd *d, struct rdd_client *c, uint64_t token)
{
	uint32_t slot = rdd_tokmap_find(&c->map, &d->slab, token);
	if (slot == RDD_NIL)
		return ENOENT;
	reg_destroy(d, c, slot);
	return 0;
}

static uint32_t rearm_one(struct rdd *d, struct rdd_client *c, uint64_t token)
{
	uint32_t slot = rdd_tokmap_find(&c->map, &d->slab, token);
	if (slot == RDD_NIL)
		return ENOENT;
	struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
	if (r->state & RDD_REG_GROUPED) {
		r->state &= (uint8_t)~RDD_REG_DISARMED;
		rdd_group_rearm(d, slot);
		return 0;
	}
	struct epoll_event ev = {
		.events = epoll_events_for(r->interest, r->flags),
		.data.u64 = rdd_data(RDD_TAG_REG, r->gen, slot),
	};
	if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, r->fd, &ev) < 0)
		return (uint32_t)errno;
	r->state &= (uint8_t)~RDD_REG_DISARMED;
	return 0;
}

static uint32_t join_one(struct rdd *d, struct rdd_client *c, uint32_t i)
{
	uint64_t token;
	char name[RDP_GROUP_NAME_SIZE + 1];
	if (!rdp_join_entry_get(rdd_rxbuf, i, &token, name) || !rdd_group_name_ok(name))
		return EINVAL; /* before the token: the order of readyd-protocol(7) */
	uint32_t slot = rdd_tokmap_find(&c->map, &d->slab, token);
	if (slot == RDD_NIL)
		return ENOENT;
	return rdd_group_join(d, c, slot, name, false);
}

/* ADD, MOD, DEL, REARM: one status per entry, one REPLY. */
static int handle_batch(struct rdd *d, struct rdd_client *c, const struct rdp_hdr *h,
			struct rdp_rx *rx)
{
	const void *msg = rdd_rxbuf;
	/* The reply is built in its own buffer: rdd_txbuf may be used by a send below. */
	uint8_t reply[RDP_HDR_SIZE + RDP_BATCH_MAX * RDP_STATUS_SIZE];

	struct rdd_uid_count *u = h->type == RDP_MSG_ADD ? uid_slot(d, c->uid, false) : NULL;
	rdp_batch_begin(reply, RDP_MSG_REPLY, h->id);
	for (uint32_t i = 0; i < h->count; i++) {
		struct rdp_add_entry e;
		uint32_t st = 0;
		switch (h->type) {
		case RDP_MSG_ADD:
			rdp_add_entry_get(msg, i, &e);
			st = add_one(d, c, u, &e, rx->fds[i]);
			rx->fds[i] = -1;
			break;
		case RDP_MSG_MOD:
			rdp_add_entry_get(msg, i, &e);
			st = mod_one(d, c, &e);
			break;
		case RDP_MSG_DEL:
			st = del_one(d, c, rdp_token_get(msg, i));
			break;
		case RDP_MSG_REARM:
			st = rearm_one(d, c, rdp_token_get(msg, i));
			break;
		case RDP_MSG_JOIN:
			st = join_one(d, c, i);
			break;
		}
		rdp_reply_set(reply, i, st);
	}
	rx->nfds = 0;
	size_t len = rdp_batch_finish(reply, h->count);
	return rdd_client_send(d, c, reply, len);
}

static int handle_hello(struct rdd *d, struct rdd_client *c, const struct rdp_hdr *h)
{
	uint32_t version, features;
	rdp_hello_get(rdd_rxbuf, &version, &features);
	if (version < 1)
		return -EPROTONOSUPPORT;
	struct rdp_welcome w = {
		.version = version < RDP_VERSION ? version : RDP_VERSION,
		.features = features & RDP_FEATURES_KNOWN,
		.max_message = RDP_MSG_MAX,
		.max_batch = RDP_BATCH_MAX,
		.max_registrations = d->lim.regs_per_client,
	};
	c->hello_done = true;
	c->features = w.features;
	size_t len = rdp_encode_welcome(rdd_txbuf, RDP_MSG_MAX, h->id, &w);
	int r = rdd_client_send(d, c, rdd_txbuf, len);
	/* A client that can resync survives a daemon crash: systemd keeps its connection. */
	if (r == 0 && (c->features & RDP_FEATURE_RESYNC))
		rdd_notify_fdstore(d, c);
	return r;
}

static int handle_control(struct rdd *d, struct rdd_client *c, const struct rdp_hdr *h)
{
	char *json = rdd_control(d, c, h->id, (const char *)rdd_rxbuf + RDP_HDR_SIZE,
				 h->length - RDP_HDR_SIZE);
	if (!json) {
		/* An answer needs no allocation to say there was none to be had. */
		static const char oom[] = "{\"ok\":false,\"error\":\"out of memory\"}";
		size_t len = rdp_encode_json(rdd_txbuf, RDP_MSG_MAX, RDP_MSG_CONTROL_REPLY, h->id, oom,
					     sizeof(oom) - 1);
		return rdd_client_send(d, c, rdd_txbuf, len);
	}
	size_t jl = strlen(json);
	static const char too_big[] = "{\"ok\":false,\"error\":\"reply too large\"}";
	if (jl > RDP_MSG_MAX - RDP_HDR_SIZE) {
		free(json);
		json = strdup(too_big);
		if (!json)
			return -ENOMEM;
		jl = strlen(json);
	}
	size_t len = rdp_encode_json(rdd_txbuf, RDP_MSG_MAX, RDP_MSG_CONTROL_REPLY, h->id, json, jl);
	free(json);
	return rdd_client_send(d, c, rdd_txbuf, len);
}

/* Read and answer one request. Returns 1 when one was handled, 0 when none is waiting,
 * -1 when the client was closed (c is gone). */
static int read_one(struct rdd *d, struct rdd_client *c)
{
	struct rdp_rx rx;
	struct rdp_hdr h = { 0 };
	int r = rdp_recv(c->fd, rdd_rxbuf, RDP_MSG_MAX, &rx, true);

	if (r == -EAGAIN) {
		c->in_pending = false;
		return 0;
	}
	if (r < 0) {
		rdd_client_close(d, c, strerror(-r));
		return -1;
	}
	if (r == 0) {
		/* End of stream, or an empty message: SEQPACKET shows both as 0 bytes. Either
		 * way the connection ends; the ERROR only reaches a peer still there. */
		size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, EPROTO, RDP_E_SHORT,
					      rdp_reason_str(RDP_E_SHORT));
		(void)rdp_send(c->fd, rdd_txbuf, len, NULL, 0, true);
		rdd_client_close(d, c, "end of stream");
		return -1;
	}
	uint32_t reason;
	if (rx.ctruncated)
		reason = RDP_E_CTRUNC;
	else if (rx.truncated)
		reason = RDP_E_TOO_BIG;
	else
		reason = rdp_check_request(rdd_rxbuf, rx.len, rx.nfds, &h);
	if (reason == RDP_E_NONE && c->hello_done != (h.type != RDP_MSG_HELLO))
		reason = RDP_E_STATE;
	if (reason == RDP_E_NONE)
		reason = rdp_check_entries(&h, rdd_rxbuf);
	if (reason != RDP_E_NONE) {
		protocol_error(d, c, h.id, reason, &rx);
		return -1;
	}

	if (c->resyncing || h.type == RDP_MSG_RESYNC_ACK) {
		/* After RESYNC everything the client sent before seeing it is void (the
		 * daemon that would have answered is gone); RESYNC_ACK ends that. */
		if (h.type == RDP_MSG_RESYNC_ACK && !c->resyncing) {
			protocol_error(d, c, h.id, RDP_E_STATE, &rx);
			return -1;
		}
		rdp_rx_close_fds(&rx);
		if (h.type == RDP_MSG_RESYNC_ACK)
			c->resyncing = false;
		return 1;
	}
	switch (h.type) {
	case RDP_MSG_HELLO:
		r = handle_hello(d, c, &h);
		if (r == -EPROTONOSUPPORT) {
			protocol_error(d, c, h.id, RDP_E_VERSION, &rx);
			return -1;
		}
		break;
	case RDP_MSG_CONTROL:
		r = handle_control(d, c, &h);
		break;
	default:
		r = handle_batch(d, c, &h, &rx);
		break;
	}
	if (r < 0) {
		rdd_client_close(d, c, strerror(-r));
		return -1;
	}
	return 1;
}

void rdd_client_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events)
{
	if (slot >= d->nclients_cap)
		return;
	struct rdd_client *c = d->clients[slot];
	if (!c || c->gen != (gen & RDD_GEN_MASK))
		return;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->in_pending = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		c->out_ready = true;
	rdd_client_mark(d, c);
}

void rdd_reg_deliver(struct rdd *d, uint32_t slot, uint32_t events)
{
	struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
	if (r->flags & RDP_FLAG_ONESHOT)
		r->state |= RDD_REG_DISARMED; /* the kernel disarmed it as it reported */
	uint8_t bits = ready_from_epoll(events) & (uint8_t)(r->interest | READY_ALWAYS);
	if (!bits)
		return;
	r->tick++;
	r->pending |= bits;
	struct rdd_client *c = d->clients[r->owner];
	if (rdd_queue_push(&c->ready, &d->slab, slot))
		rdd_client_mark(d, c);
}

void rdd_reg_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events)
{
	if (rdd_slab_lookup(&d->slab, slot, gen))
		rdd_reg_deliver(d, slot, events);
}

/* Do a client's work for this wakeup, within its budgets: queued output first, then
 * requests (while its output backlog is under the limit), then events. */
void rdd_client_service(struct rdd *d, struct rdd_client *c)
{
	int r = 0;
	/* Blocked output waits for EPOLLOUT instead of retrying on every wakeup. */
	bool blocked = c->want_out && !c->out_ready;

	c->out_ready = false;
	if (c->kicked) {
		/* Only its ERROR is left to send; nothing it sends is read any more. */
		if (blocked || flush_out(d, c) == 1)
			return;
		rdd_client_close(d, c, "disconnected");
		return;
	}
	if (!blocked && out_pending(c)) {
		r = flush_out(d, c);
		if (r < 0)
			goto out_close;
		blocked = r == 1;
	}
	for (uint32_t budget = d->lim.req_budget; budget > 0 && c->in_pending; budget--) {
		if (c->out_len - c->out_off >= d->lim.out_max)
			break;
		if (read_one(d, c) < 0)
			return;
	}
	blocked = blocked || out_pending(c);
	if (!blocked && c->ready.len > 0) {
		r = flush_events(d, c, d->lim.event_budget);
		if (r < 0)
			goto out_close;
		blocked = r == 1;
	}
	if (!blocked && c->want_out && set_out_interest(d, c, false) < 0)
		goto out_close;

	bool more_input = c->in_pending && c->out_len - c->out_off < d->lim.out_max;
	if (more_input || (!blocked && c->ready.len > 0))
		rdd_client_mark(d, c);
	return;

out_close:
	rdd_client_close(d, c, r < 0 ? strerror(-r) : "send failed");
}

int rdd_reg_restore(struct rdd *d, struct rdd_client *c, const struct rdd_reg *saved, int fd,
		    const char *group, bool holds)
{
	uint32_t slot;
	int r;

	if (rdd_tokmap_find(&c->map, &d->slab, saved->token) != RDD_NIL) {
		r = -EEXIST;
		goto out_close_fd;
	}
	r = rdd_slab_alloc(&d->slab, &slot);
	if (r < 0)
		goto out_close_fd;
	struct rdd_reg *g = rdd_slab_at(&d->slab, slot);
	g->token = saved->token;
	g->fd = fd;
	g->owner = c->slot;
	g->interest = saved->interest;
	g->flags = saved->flags;
	g->tick = saved->tick;
	g->pending = saved->pending;
	g->state |= saved->state & RDD_REG_DISARMED;
	struct epoll_event ev = {
		.events = rdd_reg_epoll_events(g),
		.data.u64 = rdd_data(RDD_TAG_REG, g->gen, slot),
	};
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		r = -errno;
		goto out_free_slot;
	}
	if (rdd_tokmap_insert(&c->map, &d->slab, slot) < 0) {
		r = -ENOMEM;
		epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL);
		goto out_free_slot;
	}
	c->nregs++;
	d->nfds++;
	struct rdd_uid_count *u = uid_slot(d, c->uid, false);
	if (u)
		u->regs++;
	if (g->pending && rdd_queue_push(&c->ready, &d->slab, slot))
		rdd_client_mark(d, c);
	if (group) {
		uint32_t st = rdd_group_join(d, c, slot, group, true);
		if (st)
			log_err("upgrade: token %llu could not rejoin group %s: %s",
				(unsigned long long)saved->token, group, strerror((int)st));
		else if (holds)
			rdd_group_set_holder(d, slot);
	}
	return 0;

out_free_slot:
	rdd_slab_free(&d->slab, slot);
out_close_fd:
	close(fd);
	return r;
}

int rdd_client_restore_out(struct rdd_client *c, const void *bytes, size_t len)
{
	return len ? out_append(c, bytes, len) : 0;
}

int rdd_client_adopt_stored(struct rdd *d, int fd, uint64_t id)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct rdd_client *c;
	int r;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	r = rdd_client_attach(d, fd, &cred, &c);
	if (r < 0) {
		close(fd);
		return r;
	}
	c->id = id;
	if (id > d->next_client_id)
		d->next_client_id = id;
	c->connected_usec = rdd_now_usec(CLOCK_REALTIME);
	c->hello_done = true;
	c->features = RDP_FEATURE_RESYNC;
	c->stored = true; /* systemd still holds it under its name */
	c->resyncing = true;
	read_comm(c);
	uint8_t resync[RDP_HDR_SIZE];
	rdp_batch_begin(resync, RDP_MSG_RESYNC, 0);
	r = rdd_client_send(d, c, resync, sizeof(resync));
	if (r < 0) {
		rdd_client_close(d, c, "gone before RESYNC");
		return r;
	}
	c->in_pending = true;
	rdd_client_mark(d, c);
	log_info("adopted stored connection of client %llu (pid %d): RESYNC sent",
		 (unsigned long long)id, (int)c->pid);
	return 0;
}
