/* Live upgrade: the daemon re-executes itself (or a new binary) without its clients
 * seeing a disconnect. The old process writes its state as JSON into a memfd, clears
 * FD_CLOEXEC on the listeners, the client connections, every registered fd and the
 * memfd, and calls execve with the command line it was started with and
 * READYD_UPGRADE_FD naming the memfd. The new process restores the state into a fresh
 * epoll: registrations are added again (an fd that became ready meanwhile is reported
 * by that ADD), queued readiness and unsent answers carry over, and a disarmed oneshot
 * stays disarmed. The pid does not change, so systemd sees RELOADING=1 ... READY=1.
 * jansson stays inside this file. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "config.h"
#include "log.h"
#include "rdd.h"

#define UPGRADE_ENV "READYD_UPGRADE_FD"
#define STATE_FORMAT RDD_UPGRADE_STATE_FORMAT

static void hex_encode(char *out, const uint8_t *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_value(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Returns the decoded length, or -1 on a malformed string. */
static ssize_t hex_decode(uint8_t *out, const char *in, size_t len)
{
	if (len % 2)
		return -1;
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hex_value(in[2 * i]), lo = hex_value(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return (ssize_t)(len / 2);
}

static json_t *client_state(struct rdd *d, struct rdd_client *c)
{
	json_t *regs = json_array();
	size_t outlen = c->out_len - c->out_off;
	char *hex = malloc(outlen * 2 + 1);
	if (!regs || !hex)
		goto fail;
	if (outlen)
		hex_encode(hex, c->out + c->out_off, outlen);
	else
		hex[0] = '\0'; /* c->out may be NULL: nothing was ever queued */
	for (uint32_t i = 0; c->map.slots && i <= c->map.mask; i++) {
		uint32_t slot = c->map.slots[i];
		if (slot == RDD_NIL)
			continue;
		const struct rdd_reg *r = rdd_slab_at(&d->slab, slot);
		/* [token, fd, interest, flags, pending, tick, disarmed, group or null, holds
		 * the group's wakeup]; the token's 64 bits travel as the same bits of a
		 * json_int_t. */
		json_t *a = json_pack("[I, i, i, i, i, I, b, s?, b]", (json_int_t)r->token, r->fd,
				      r->interest, r->flags, r->pending, (json_int_t)r->tick,
				      (r->state & RDD_REG_DISARMED) != 0, rdd_group_name(d, slot),
				      rdd_group_holds(d, slot));
		if (!a || json_array_append_new(regs, a) < 0)
			goto fail;
	}
	json_t *o = json_pack("{s:i, s:I, s:I, s:I, s:I, s:s, s:b, s:I, s:I, s:s, s:o, s:b, s:b, s:i, s:b}",
			      "fd", c->fd,
			      "id", (json_int_t)c->id, "pid", (json_int_t)c->pid, "uid",
			      (json_int_t)c->uid, "gid", (json_int_t)c->gid, "comm", c->comm, "hello",
			      c->hello_done, "since", (json_int_t)c->connected_usec, "delivered",
			      (json_int_t)c->events_delivered, "out", hex, "regs", regs, "stored",
			      c->stored, "resyncing", c->resyncing, "features", (int)c->features,
			      "kicked", c->kicked);
	free(hex);
	return o;
fail:
	json_decref(regs);
	free(hex);
	return NULL;
}

static json_t *daemon_state(struct rdd *d, struct rdd_client *requester, uint32_t req_id)
{
	json_t *listeners = json_array(), *clients = json_array();
	if (!listeners || !clients)
		goto fail;
	for (unsigned i = 0; i < d->nlisten; i++)
		if (json_array_append_new(listeners, json_integer(d->listen_fds[i])) < 0)
			goto fail;
	for (uint32_t i = 0; i < d->nclients_cap; i++) {
		if (!d->clients[i])
			continue;
		json_t *c = client_state(d, d->clients[i]);
		if (!c || json_array_append_new(clients, c) < 0)
			goto fail;
	}
	json_t *reply_to = requester ? json_pack("{s:I, s:I}", "client", (json_int_t)requester->id,
						 "request", (json_int_t)req_id)
				     : json_null();
	return json_pack("{s:i, s:o, s:s?, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "format",
			 STATE_FORMAT, "listeners", listeners, "socket_path", d->socket_path,
			 "bound_dev", (json_int_t)d->bound_dev, "bound_ino", (json_int_t)d->bound_ino,
			 "start_usec", (json_int_t)d->start_usec, "events_delivered",
			 (json_int_t)d->events_delivered, "accepted", (json_int_t)d->accepted,
			 "upgrades", (json_int_t)d->upgrades, "next_client_id",
			 (json_int_t)d->next_client_id, "reply_to", reply_to, "clients", clients);
fail:
	json_decref(listeners);
	json_decref(clients);
	return NULL;
}

/* Every fd the new process must inherit, with close-on-exec set or cleared. */
static void set_cloexec_all(struct rdd *d, bool on)
{
	for (unsigned i = 0; i < d->nlisten; i++)
		fcntl(d->listen_fds[i], F_SETFD, on ? FD_CLOEXEC : 0);
	for (uint32_t i = 0; i < d->nclients_cap; i++) {
		struct rdd_client *c = d->clients[i];
		if (!c)
			continue;
		fcntl(c->fd, F_SETFD, on ? FD_CLOEXEC : 0);
		for (uint32_t k = 0; c->map.slots && k <= c->map.mask; k++)
			if (c->map.slots[k] != RDD_NIL)
				fcntl(rdd_slab_at(&d->slab, c->map.slots[k])->fd, F_SETFD,
				      on ? FD_CLOEXEC : 0);
	}
}

/* Run 'binary --version' and expect "readyd ": a binary that cannot even start is
 * refused before anything is handed to it. Bounded: 5 s, then it is killed. */
static int check_binary(const char *binary, char *err, size_t errlen)
{
	int p[2];
	if (access(binary, X_OK) < 0) {
		snprintf(err, errlen, "%s: %s", binary, strerror(errno));
		return -errno;
	}
	if (pipe2(p, O_CLOEXEC) < 0) {
		int r = -errno;
		snprintf(err, errlen, "checking %s: pipe: %s", binary, strerror(-r));
		return r;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int r = -errno;
		snprintf(err, errlen, "checking %s: fork: %s", binary, strerror(-r));
		close(p[0]);
		close(p[1]);
		return r;
	}
	if (pid == 0) {
		dup2(p[1], STDOUT_FILENO);
		execl(binary, binary, "--version", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	char out[64] = "";
	size_t got = 0;
	struct pollfd pf = { .fd = p[0], .events = POLLIN };
	while (got < sizeof(out) - 1 && poll(&pf, 1, 5000) == 1) {
		ssize_t n = read(p[0], out + got, sizeof(out) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(p[0]);
	int st = 0;
	for (int i = 0; i < 50 && waitpid(pid, &st, WNOHANG) == 0; i++) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		if (i == 49) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
		}
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || strncmp(out, "readyd ", 7) != 0) {
		snprintf(err, errlen, "%s --version did not answer as readyd does", binary);
		return -ENOEXEC;
	}
	char want[32];
	snprintf(want, sizeof(want), "upgrade-state %d)", STATE_FORMAT);
	if (!strstr(out, want)) {
		snprintf(err, errlen, "%s cannot take over this daemon's state (it does not say \"%s\")",
			 binary, want);
		return -ENOEXEC;
	}
	return 0;
}

int rdd_upgrade(struct rdd *d, const char *binary, struct rdd_client *requester, uint32_t req_id,
		char *err, size_t errlen)
{
	int r;
	if (d->stopping) {
		/* A stop asked for in this same turn of the loop must not be lost in the
		 * new program, which would know nothing of it. */
		snprintf(err, errlen, "the daemon is stopping");
		return -ESHUTDOWN;
	}
	if (!d->argv) {
		snprintf(err, errlen, "the daemon's command line is unknown");
		return -EINVAL;
	}
	if (!binary)
		binary = d->exe_path;
	if (!binary[0]) {
		snprintf(err, errlen, "the daemon's own binary is unknown: give one");
		return -ENOENT;
	}
	r = check_binary(binary, err, errlen);
	if (r == 0 && d->config_path) {
		/* The new process reads the config file at start: a file that would stop it
		 * must stop the upgrade instead. */
		struct rdd_config cfg;
		char cerr[400];
		r = rdd_config_load(d->config_path, d->config_required, &cfg, cerr, sizeof(cerr));
		if (r < 0)
			snprintf(err, errlen, "%s: %s", d->config_path, cerr);
		else
			rdd_config_fini(&cfg);
	}
	if (r < 0) {
		log_err("upgrade refused: %s; carrying on", err);
		return r;
	}

	rdd_notify_reloading(d);
	/* Queued answers and readiness travel in the state, unsent. */
	json_t *state = daemon_state(d, requester, req_id);
	char *text = state ? json_dumps(state, JSON_COMPACT) : NULL;
	json_decref(state);
	if (!text) {
		snprintf(err, errlen, "out of memory serialising the state");
		r = -ENOMEM;
		goto out_ready;
	}
	int mfd = memfd_create("readyd-state", 0);
	size_t len = strlen(text), off = 0;
	while (mfd >= 0 && off < len) {
		ssize_t n = write(mfd, text + off, len - off);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	free(text);
	if (mfd < 0 || off < len || lseek(mfd, 0, SEEK_SET) < 0) {
		r = -errno;
		snprintf(err, errlen, "writing the state: %s", strerror(errno));
		if (mfd >= 0)
			close(mfd);
		goto out_ready;
	}

	char val[16];
	snprintf(val, sizeof(val), "%d", mfd);
	log_notice("upgrading: executing %s with %u clients and %u registrations", binary,
		   d->nclients, d->slab.used);
	set_cloexec_all(d, false);
	setenv(UPGRADE_ENV, val, 1);
	execv(binary, d->argv);
	/* Still here: the old daemon carries on as if nothing happened. */
	r = -errno;
	snprintf(err, errlen, "execv %s: %s", binary, strerror(errno));
	unsetenv(UPGRADE_ENV);
	set_cloexec_all(d, true);
	close(mfd);
out_ready:
	log_err("upgrade failed: %s; carrying on", err);
	rdd_notify_ready(d);
	return r;
}

int rdd_upgrade_fd(void)
{
	const char *v = getenv(UPGRADE_ENV);
	if (!v)
		return -1;
	char *end;
	long fd = strtol(v, &end, 10);
	unsetenv(UPGRADE_ENV);
	if (*end || fd < 3 || fd > 1 << 30)
		return -1;
	return (int)fd;
}

static json_int_t get_int(json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

/* One client of the state: its connection, its registrations, its unsent answers. */
static int restore_client(struct rdd *d, json_t *o, json_int_t reply_client, json_int_t reply_req)
{
	struct ucred cred = { .pid = (pid_t)get_int(o, "pid"), .uid = (uid_t)get_int(o, "uid"),
			      .gid = (gid_t)get_int(o, "gid") };
	int fd = (int)get_int(o, "fd");
	json_t *regs = json_object_get(o, "regs");
	struct rdd_client *c;
	size_t i;
	json_t *a;

	fcntl(fd, F_SETFD, FD_CLOEXEC);
	int r = rdd_client_attach(d, fd, &cred, &c);
	if (r < 0) {
		log_err("upgrade: client fd %d: %s; dropping it", fd, strerror(-r));
		close(fd);
		json_array_foreach(regs, i, a) close((int)json_integer_value(json_array_get(a, 1)));
		return r;
	}
	c->id = (uint64_t)get_int(o, "id");
	c->hello_done = json_is_true(json_object_get(o, "hello"));
	c->connected_usec = (uint64_t)get_int(o, "since");
	c->events_delivered = (uint64_t)get_int(o, "delivered");
	c->stored = json_is_true(json_object_get(o, "stored"));
	c->resyncing = json_is_true(json_object_get(o, "resyncing"));
	c->features = (uint32_t)get_int(o, "features");
	c->kicked = json_is_true(json_object_get(o, "kicked"));
	/* A connection that still owes its HELLO gets a fresh handshake deadline. */
	if (!c->hello_done)
		rdd_handshake_start(d, c);
	snprintf(c->comm, sizeof(c->comm), "%s", json_string_value(json_object_get(o, "comm")) ?: "?");

	json_array_foreach(regs, i, a) {
		struct rdd_reg saved = {
			.token = (uint64_t)json_integer_value(json_array_get(a, 0)),
			.interest = (uint8_t)json_integer_value(json_array_get(a, 2)),
			.flags = (uint8_t)json_integer_value(json_array_get(a, 3)),
			.pending = (uint8_t)json_integer_value(json_array_get(a, 4)),
			.tick = (uint32_t)json_integer_value(json_array_get(a, 5)),
			.state = json_is_true(json_array_get(a, 6)) ? RDD_REG_DISARMED : 0,
		};
		int rfd = (int)json_integer_value(json_array_get(a, 1));
		fcntl(rfd, F_SETFD, FD_CLOEXEC);
		r = rdd_reg_restore(d, c, &saved, rfd, json_string_value(json_array_get(a, 7)),
				    json_is_true(json_array_get(a, 8)));
		if (r < 0)
			log_err("upgrade: client %llu token %llu: %s; registration lost",
				(unsigned long long)c->id, (unsigned long long)saved.token, strerror(-r));
	}

	const char *hex = json_string_value(json_object_get(o, "out"));
	size_t hl = hex ? strlen(hex) : 0;
	if (hl) {
		uint8_t *bytes = malloc(hl / 2 + 1);
		ssize_t n = bytes ? hex_decode(bytes, hex, hl) : -1;
		if (n < 0 || rdd_client_restore_out(c, bytes, (size_t)n) < 0)
			log_err("upgrade: client %llu: queued answers lost", (unsigned long long)c->id);
		free(bytes);
	}
	if ((json_int_t)c->id == reply_client) {
		/* The answer to the upgrade request, from the new binary. */
		char json[160];
		int jl = snprintf(json, sizeof(json),
				  "{\"ok\":true,\"upgraded\":true,\"version\":\"%s\",\"pid\":%d}",
				  RDD_VERSION, (int)getpid());
		size_t len = rdp_encode_json(rdd_txbuf, RDP_MSG_MAX, RDP_MSG_CONTROL_REPLY,
					     (uint32_t)reply_req, json, (size_t)jl);
		(void)rdd_client_restore_out(c, rdd_txbuf, len);
	}
	/* Requests that arrived during the upgrade are read; answers kept are sent. */
	c->in_pending = true;
	c->out_ready = true;
	rdd_client_mark(d, c);
	return 0;
}

int rdd_upgrade_restore(struct rdd *d, int fd)
{
	json_error_t jerr;
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	json_t *st = json_loadfd(fd, 0, &jerr);
	close(fd);
	if (!st || get_int(st, "format") != STATE_FORMAT) {
		log_err("upgrade: unreadable state (%s); starting empty", st ? "unknown format" : jerr.text);
		json_decref(st);
		return -EINVAL;
	}
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(st, "listeners"), i, v) {
		int lfd = (int)json_integer_value(v);
		fcntl(lfd, F_SETFD, FD_CLOEXEC);
		if (rdd_listen_adopt(d, lfd) < 0)
			close(lfd);
	}
	const char *path = json_string_value(json_object_get(st, "socket_path"));
	if (path)
		d->socket_path = strdup(path);
	d->bound_dev = (uint64_t)get_int(st, "bound_dev");
	d->bound_ino = (uint64_t)get_int(st, "bound_ino");
	d->start_usec = (uint64_t)get_int(st, "start_usec");
	d->events_delivered = (uint64_t)get_int(st, "events_delivered");
	d->accepted = (uint64_t)get_int(st, "accepted");
	d->upgrades = (uint64_t)get_int(st, "upgrades") + 1; /* absent (older state): 0 */
	d->next_client_id = (uint64_t)get_int(st, "next_client_id");
	json_t *reply_to = json_object_get(st, "reply_to");
	json_int_t rc = json_is_object(reply_to) ? get_int(reply_to, "client") : 0;
	json_int_t rq = json_is_object(reply_to) ? get_int(reply_to, "request") : 0;
	json_array_foreach(json_object_get(st, "clients"), i, v) restore_client(d, v, rc, rq);
	log_notice("upgraded: resumed %u clients and %u registrations", d->nclients, d->slab.used);
	json_decref(st);
	return d->nlisten > 0 ? 0 : -EBADF;
}
