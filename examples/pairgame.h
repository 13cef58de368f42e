/* pairgame: the workload of the event-loop examples (libuv-client.c, libevent-client.c).
 * Four socket pairs, every end registered with readyd: each pair plays three rounds (or
 * --rounds N) of ping and echo. Only the event loop around it differs between the
 * examples. */
#ifndef READYD_EXAMPLES_PAIRGAME_H
#define READYD_EXAMPLES_PAIRGAME_H

#include <stdbool.h>

#include "readyd.h"

#define NPAIRS 4
#define ROUNDS 3          /* rounds per pair unless --rounds says otherwise */
#define TIMEOUT_MS 10000  /* the loops give up after this long without readiness */

/* One socket pair: the client end (token 2i) sends "ping i round r", the server end
 * (token 2i + 1) echoes it back, the client end checks it and sends the next round. */
struct pair {
	int fd[2];
	int rounds; /* echoes received and checked */
};

struct game {
	rd_client *rd;
	struct pair p[NPAIRS];
	int rounds;          /* per pair */
	int finished;        /* pairs that played every round */
	int err;             /* first error, -errno */
	bool rewatch;        /* the connection is a new socket: watch rd_fd() again */
	unsigned reconnects; /* times that happened */
};

/* The command line: --socket PATH and --rounds N. Returns 0, or 2 after a usage message. */
int game_options(struct game *g, int argc, char **argv, const char *name, const char **path);
/* What to do whenever rd_fd() is readable: take every event waiting. When the daemon
 * went away and the library connected again (the replayed registrations come back with
 * tick 0), this sets g->rewatch: rd_fd() has its old number but is a new socket, which
 * an epoll-based loop no longer watches. The caller stops and starts its watcher. */
void drain(struct game *g);
/* The pairs, every end registered with readyd. */
int game_setup(struct game *g);
/* The first round of every pair; the rest is played from the event loop. */
int game_start(struct game *g);
void game_end(struct game *g);

#endif
