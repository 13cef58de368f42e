/* pairgame: the workload of the event-loop examples (libuv-client.c, libevent-client.c).
 * Four socket pairs, every end registered with readyd: each pair plays three rounds of
 * ping and echo. Only the event loop around it differs between the examples. */
#ifndef READYD_EXAMPLES_PAIRGAME_H
#define READYD_EXAMPLES_PAIRGAME_H

#include "readyd.h"

#define NPAIRS 4
#define ROUNDS 3
#define TIMEOUT_MS 10000

/* One socket pair: the client end (token 2i) sends "ping i round r", the server end
 * (token 2i + 1) echoes it back, the client end checks it and sends the next round. */
struct pair {
	int fd[2];
	int rounds; /* echoes received and checked */
};

struct game {
	rd_client *rd;
	struct pair p[NPAIRS];
	int finished; /* pairs that played every round */
	int err;      /* first error, -errno */
};

/* What to do whenever rd_fd() is readable: take every event waiting. */
void drain(struct game *g);
/* The pairs, every end registered with readyd. */
int game_setup(struct game *g);
/* The first round of every pair; the rest is played from the event loop. */
int game_start(struct game *g);
void game_end(struct game *g);

#endif
