/* The control plane: JSON requests in CONTROL messages, JSON answers in CONTROL_REPLY.
 * Everyone may read the daemon's status and limits and their own uid's connections;
 * the policy's admins may read everyone's and disconnect clients. jansson stays inside
 * this file: the rest of the daemon sees a string. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "rdd.h"

/* Entries per page of clients or registrations; a page that does not fit in a message
 * is answered with half as many, and so on (rdd_control). */
#define PAGE_MAX 256

/* "offset" of a paged request: absent is 0. Returns false for anything but an integer
 * from 0 up. */
static bool page_offset(json_t *req, json_int_t *offset)
{
	json_t *o = json_object_get(req, "offset");
	*offset = o ? json_integer_value(o) : 0;
	return !o || (json_is_integer(o) && *offset >= 0);
}

/* The answer of a paged command: entries [offset, offset + n) of total, under 'what'. */
static json_t *page_reply(const char *what, json_t *arr, json_int_t offset, json_int_t total)
{
	json_int_t next = offset + (json_int_t)json_array_size(arr);
	return json_pack("{s:b, s:I, s:I, s:o, s:o}", "ok", 1, "total", total, "offset", offset,
			 what, arr, "next_offset", next < total ? json_integer(next) : json_null());
}

/* Make s valid UTF-8 in place: every byte that does not start or continue a whole,
 * shortest-form sequence becomes '?'. Text cut short by a precision or a buffer may end
 * in half a character, which JSON cannot carry. */
static void utf8_mend(char *s)
{
	unsigned char *p = (unsigned char *)s;
	while (*p) {
		size_t n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
			 : (*p & 0xf8) == 0xf0 ? 4 : 0;
		size_t k = 1;
		while (n > 1 && k < n && (p[k] & 0xc0) == 0x80)
			k++;
		uint32_t cp = n == 2 ? (p[0] & 0x1fu) << 6 | (p[1] & 0x3f)
			    : n == 3 ? (p[0] & 0x0fu) << 12 | (p[1] & 0x3fu) << 6 | (p[2] & 0x3f)
			    : n == 4 ? (p[0] & 0x07u) << 18 | (p[1] & 0x3fu) << 12 |
					       (p[2] & 0x3fu) << 6 | (p[3] & 0x3f)
				     : 0;
		bool ok = n == 1 || (n > 1 && k == n &&
				     ((n == 2 && cp >= 0x80) || (n == 3 && cp >= 0x800 &&
				      (cp < 0xd800 || cp > 0xdfff)) || (n == 4 && cp >= 0x10000 &&
				      cp <= 0x10ffff)));
		if (!ok) {
			*p++ = '?';
			continue;
		}
		p += n;
	}
}

static json_t *error_reply(const char *fmt, const char *arg)
{
	char text[640];
	snprintf(text, sizeof(text), fmt, arg);
	utf8_mend(text);
	return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

static json_t *status(struct rdd *d)
{
	uint64_t up = rdd_now_usec(CLOCK_MONOTONIC) - d->start_usec;
	return json_pack("{s:b, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "ok", 1, "version",
			 RDD_VERSION, "protocol", (int)RDP_VERSION, "pid", (json_int_t)getpid(),
			 "uptime_usec", (json_int_t)up, "clients", (json_int_t)d->nclients,
			 "registrations", (json_int_t)d->slab.used, "events_delivered",
			 (json_int_t)d->events_delivered, "connections_accepted",
			 (json_int_t)d->accepted, "upgrades", (json_int_t)d->upgrades);
}

static json_t *limits(struct rdd *d)
{
	return json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "ok", 1,
			 "registrations_per_client", (json_int_t)d->lim.regs_per_client,
			 "clients_per_uid", (json_int_t)d->lim.clients_per_uid, "max_fds",
			 (json_int_t)d->lim.max_fds, "fds_in_use", (json_int_t)d->nfds,
			 "output_bytes_per_client", (json_int_t)d->lim.out_max, "message_bytes",
			 (json_int_t)RDP_MSG_MAX, "batch_entries", (json_int_t)RDP_BATCH_MAX,
			 "events_per_message", (json_int_t)RDP_EVENTS_MAX);
}

static bool may_see(struct rdd *d, const struct rdd_client *self, const struct rdd_client *c)
{
	return c->uid == self->uid || rdd_is_admin(d, self->uid);
}

static json_t *clients(struct rdd *d, struct rdd_client *self, json_t *req, json_int_t page)
{
	json_int_t offset, seen = 0;
	if (!page_offset(req, &offset))
		return error_reply("%s", "\"offset\" must be an integer from 0 up");
	json_t *arr = json_array();
	if (!arr)
		return NULL;
	for (uint32_t i = 0; i < d->nclients_cap; i++) {
		struct rdd_client *c = d->clients[i];
		if (!c || !may_see(d, self, c))
			continue;
		if (seen++ < offset || (json_int_t)json_array_size(arr) >= page)
			continue;
		json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:b}", "id",
				      (json_int_t)c->id, "pid", (json_int_t)c->pid, "uid",
				      (json_int_t)c->uid, "gid", (json_int_t)c->gid, "comm", c->comm,
				      "registrations", (json_int_t)c->nregs, "queued_events",
				      (json_int_t)c->ready.len, "events_delivered",
				      (json_int_t)c->events_delivered, "connected_since_usec",
				      (json_int_t)c->connected_usec, "self", c == self);
		if (!o || json_array_append_new(arr, o) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return page_reply("clients", arr, offset, seen);
}

static struct rdd_client *find_client(struct rdd *d, json_int_t id)
{
	for (uint32_t i = 0; i < d->nclients_cap; i++)
		if (d->clients[i] && (json_int_t)d->clients[i]->id == id)
			return d->clients[i];
	return NULL;
}

/* What kind of file the daemon's copy is: for people, not for programs to branch on. */
static const char *fd_type(int fd)
{
	struct stat st;
	char path[64], link[64];
	if (fstat(fd, &st) < 0)
		return "unknown";
	if (S_ISSOCK(st.st_mode)) {
		int dom = 0, type = 0;
		socklen_t l = sizeof(int);
		getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l);
		l = sizeof(int);
		getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
		if (dom == AF_UNIX)
			return "unix-socket";
		if (dom == AF_INET || dom == AF_INET6)
			return type == SOCK_STREAM ? "tcp-socket" : type == SOCK_DGRAM ? "udp-socket" : "inet-socket";
		return "socket";
	}
	if (S_ISFIFO(st.st_mode))
		return "pipe";
	if (S_ISCHR(st.st_mode))
		return "character-device";
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n > 0) {
		link[n] = '\0';
		if (strstr(link, "eventfd"))
			return "eventfd";
		if (strstr(link, "timerfd"))
			return "timerfd";
		if (strstr(link, "signalfd"))
			return "signalfd";
		if (strstr(link, "[eventpoll]"))
			return "epoll";
		if (strstr(link, "inotify"))
			return "inotify";
		if (strstr(link, "pidfd"))
			return "pidfd";
	}
	return "other";
}

static json_t *bits(uint32_t v, const char *const *names, unsigned n)
{
	json_t *a = json_array();
	for (unsigned i = 0; a && i < n; i++)
		if (v & (1u << i))
			json_array_append_new(a, json_string(names[i]));
	return a;
}

static json_t *registrations(struct rdd *d, struct rdd_client *self, json_t *req,
			     json_int_t page)
{
	static const char *const interest[] = { "readable", "writable", "priority" };
	static const char *const ready[] = { "readable", "writable", "priority",
					     "read_closed", "write_closed", "error" };
	json_t *jid = json_object_get(req, "client");
	struct rdd_client *c = self;
	if (jid) {
		if (!json_is_integer(jid))
			return error_reply("%s", "\"client\" must be a client id (an integer)");
		c = find_client(d, json_integer_value(jid));
		if (!c || !may_see(d, self, c))
			return error_reply("%s", "no such client (or not yours to see)");
	}
	json_int_t offset;
	if (!page_offset(req, &offset))
		return error_reply("%s", "\"offset\" must be an integer from 0 up");

	json_t *arr = json_array();
	json_int_t seen = 0;
	for (uint32_t i = 0; arr && c->map.slots && i <= c->map.mask; i++) {
		uint32_t slot = c->map.slots[i];
		if (slot == RDD_NIL)
			continue;
		if (seen++ < offset || (json_int_t)json_array_size(arr) >= page)
			continue;
		const struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
		char tok[24];
		/* Tokens are 64-bit: as a string, so JSON readers with doubles keep them. */
		snprintf(tok, sizeof(tok), "%llu", (unsigned long long)r->token);
		json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:o, s:I, s:s?}", "token", tok, "fd_type",
				      fd_type(r->fd), "interest", bits(r->interest, interest, 3),
				      "mode", (r->flags & RDP_FLAG_ONESHOT) ? "oneshot" : "edge",
				      "pending", bits(r->pending, ready, 6), "tick", (json_int_t)r->tick,
				      "group", rdd_group_name(d, slot));
		if (!o || json_array_append_new(arr, o) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	if (!arr)
		return NULL;
	json_t *r = page_reply("registrations", arr, offset, (json_int_t)c->nregs);
	if (r && json_object_set_new(r, "client", json_integer((json_int_t)c->id)) < 0) {
		json_decref(r);
		r = NULL;
	}
	return r;
}

static json_t *disconnect(struct rdd *d, struct rdd_client *self, json_t *req)
{
	if (!rdd_is_admin(d, self->uid))
		return error_reply("%s", "permission denied: disconnect is for the policy's admins");
	json_t *jid = json_object_get(req, "client");
	if (!json_is_integer(jid))
		return error_reply("%s", "\"client\" must be a client id (an integer)");
	struct rdd_client *c = find_client(d, json_integer_value(jid));
	if (!c)
		return error_reply("%s", "no such client");
	if (c == self)
		return error_reply("%s", "a connection cannot disconnect itself this way: close it");
	json_int_t id = (json_int_t)c->id;
	/* Said with an ERROR, so that the client knows it is not a restart to recover from. */
	rdd_client_kick(d, c, ECONNABORTED, RDP_E_DISCONNECTED);
	return json_pack("{s:b, s:I}", "ok", 1, "disconnected", id);
}

static json_t *reload(struct rdd *d, struct rdd_client *self)
{
	if (!rdd_is_admin(d, self->uid))
		return error_reply("%s", "permission denied: reload is for the policy's admins");
	char err[512];
	if (rdd_reload(d, err, sizeof(err)) < 0)
		return error_reply("reload failed, the running configuration stays: %s", err);
	return limits(d);
}

/* Only returns when the upgrade failed: on success the new binary answers. */
static json_t *upgrade(struct rdd *d, struct rdd_client *self, uint32_t id, json_t *req)
{
	if (!rdd_is_admin(d, self->uid))
		return error_reply("%s", "permission denied: upgrade is for the policy's admins");
	json_t *b = json_object_get(req, "binary");
	if (b && !json_is_string(b))
		return error_reply("%s", "\"binary\" must be a path");
	char err[300];
	rdd_upgrade(d, json_string_value(b), self, id, err, sizeof(err));
	return error_reply("upgrade failed: %s", err);
}

/* A page of clients or registrations, as many entries as fit in one message: group
 * names of escaped characters or long pending sets can make 256 too many. */
static char *paged(struct rdd *d, struct rdd_client *c, json_t *j, bool of_clients)
{
	char *s = NULL;
	for (json_int_t page = PAGE_MAX; page > 0 && !s; page /= 2) {
		json_t *reply = of_clients ? clients(d, c, j, page) : registrations(d, c, j, page);
		if (!reply)
			break;
		s = json_dumps(reply, JSON_COMPACT);
		json_decref(reply);
		if (!s)
			break;
		if (strlen(s) > RDP_MSG_MAX - RDP_HDR_SIZE) {
			free(s);
			s = NULL;
		}
	}
	json_decref(j);
	return s;
}

char *rdd_control(struct rdd *d, struct rdd_client *c, uint32_t id, const char *req, size_t len)
{
	json_error_t jerr;
	json_t *reply;

	json_t *j = json_loadb(req, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		char where[300];
		snprintf(where, sizeof(where), "line %d column %d: %s", jerr.line, jerr.column,
			 jerr.text);
		reply = error_reply("invalid JSON request: %s", where);
	} else {
		const char *cmd = json_string_value(json_object_get(j, "command"));
		if (!json_is_object(j) || !cmd)
			reply = error_reply("%s", "request must be an object with a string \"command\"");
		else if (strcmp(cmd, "status") == 0)
			reply = status(d);
		else if (strcmp(cmd, "limits") == 0)
			reply = limits(d);
		else if (strcmp(cmd, "clients") == 0 || strcmp(cmd, "registrations") == 0)
			return paged(d, c, j, cmd[0] == 'c');
		else if (strcmp(cmd, "disconnect") == 0)
			reply = disconnect(d, c, j);
		else if (strcmp(cmd, "upgrade") == 0)
			reply = upgrade(d, c, id, j);
		else if (strcmp(cmd, "reload") == 0)
			reply = reload(d, c);
#ifdef RDD_FAULT_INJECTION
		else if (strcmp(cmd, "fail-alloc") == 0) {
			rdd_fault_arm((long)json_integer_value(json_object_get(j, "after")));
			reply = json_pack("{s:b}", "ok", 1);
		}
#endif
		else
			reply = error_reply("unknown command \"%.64s\"", cmd);
		json_decref(j);
	}
	if (!reply)
		return NULL;
	char *s = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	return s;
}
