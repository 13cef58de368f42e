/* pairgame: the workload of the event-loop examples (see pairgame.h). */
#include "pairgame.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int ping(struct game *g, int i)
{
	char msg[64];
	int len = snprintf(msg, sizeof(msg), "ping %d round %d", i, g->p[i].rounds);
	if (send(g->p[i].fd[0], msg, (size_t)len, MSG_NOSIGNAL) != len)
		return -errno;
	return 0;
}

/* SEQPACKET ends: a read is one whole message. Edge mode: read until EAGAIN. */
static int on_ready(struct game *g, const struct rd_event *ev)
{
	int i = (int)(ev->token / 2), side = (int)(ev->token % 2);
	char buf[64], want[64];

	if (i >= NPAIRS)
		return -EPROTO;
	if (ev->ready & (RD_ERROR | RD_READ_CLOSED))
		return -ECONNRESET;
	for (;;) {
		ssize_t n = recv(g->p[i].fd[side], buf, sizeof(buf), 0);
		if (n < 0)
			return errno == EAGAIN ? 0 : -errno;
		if (n == 0)
			return -ECONNRESET;
		if (side == 1) {
			if (send(g->p[i].fd[1], buf, (size_t)n, MSG_NOSIGNAL) != n)
				return -errno;
			continue;
		}
		int wl = snprintf(want, sizeof(want), "ping %d round %d", i, g->p[i].rounds);
		if (n != wl || memcmp(buf, want, (size_t)n) != 0)
			return -EPROTO;
		if (++g->p[i].rounds == g->rounds)
			g->finished++;
		else {
			int r = ping(g, i);
			if (r < 0)
				return r;
		}
	}
}

/* What to do whenever rd_fd() is readable: take every event waiting, including those
 * the library kept during earlier calls. */
void drain(struct game *g)
{
	struct rd_event ev[64];
	int n;

	bool fresh = false;

	while (!g->err && (n = rd_wait(g->rd, ev, 64, 0)) != 0) {
		if (n < 0) {
			g->err = n;
			break;
		}
		for (int k = 0; k < n && !g->err; k++) {
			fresh |= ev[k].tick == 0; /* replayed after a reconnection */
			g->err = on_ready(g, &ev[k]);
		}
	}
	if (fresh) {
		g->rewatch = true;
		g->reconnects++;
	}
}

int game_options(struct game *g, int argc, char **argv, const char *name, const char **path)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "rounds", required_argument, NULL, 'r' },
		{ 0 },
	};
	int o;
	char *end;

	g->rounds = ROUNDS;
	*path = NULL;
	while ((o = getopt_long(argc, argv, "s:r:", opts, NULL)) != -1) {
		if (o == 's') {
			*path = optarg;
			continue;
		}
		long v = o == 'r' ? strtol(optarg, &end, 10) : 0;
		if (o != 'r' || *end || v < 1 || v > 1000000)
			goto usage;
		g->rounds = (int)v;
	}
	if (optind == argc)
		return 0;
usage:
	fprintf(stderr, "usage: %s [--socket PATH] [--rounds N (1 to 1000000)]\n", name);
	return 2;
}

/* The pairs, every end registered with readyd. */
int game_setup(struct game *g)
{
	for (int i = 0; i < NPAIRS; i++)
		g->p[i].fd[0] = g->p[i].fd[1] = -1;
	for (int i = 0; i < NPAIRS; i++) {
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, g->p[i].fd) < 0)
			return -errno;
		for (int side = 0; side < 2; side++) {
			int r = rd_add(g->rd, g->p[i].fd[side], (uint64_t)(2 * i + side), RD_READABLE, RD_EDGE);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* The first round of every pair; the rest is played from the event loop. */
int game_start(struct game *g)
{
	for (int i = 0; i < NPAIRS; i++) {
		int r = ping(g, i);
		if (r < 0)
			return r;
	}
	return 0;
}

void game_end(struct game *g)
{
	/* After a failure the connection may be gone for good, and every call would try
	 * to connect again first (seconds each): rd_close alone, after this, drops the
	 * registrations anyway. */
	for (int i = 0; i < NPAIRS; i++)
		for (int side = 0; side < 2; side++)
			if (g->p[i].fd[side] >= 0) {
				if (!g->err)
					rd_delete(g->rd, (uint64_t)(2 * i + side));
				close(g->p[i].fd[side]);
			}
}

