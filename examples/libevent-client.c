/* libevent-client: readyd inside a libevent loop. The connection's fd is a persistent
 * read event; when it fires, the callback drains events with rd_wait(..., 0). They drive
 * four socket pairs, every end registered with readyd: each pair plays three rounds of
 * ping and echo, and the program exits 0 once every pair has played them all.
 *
 *   libevent-client [--socket PATH]
 *
 * The loop never watches the socket pairs itself: all their readiness comes from
 * readyd. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "readyd.h"

#include "pairgame.h"

/* ---- libevent ---- */

struct ctx {
	struct game game;
	struct event_base *base;
	unsigned wakeups; /* callbacks of the rd_fd() event */
	bool timed_out;
};

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *x = arg;

	(void)fd;
	x->wakeups++;
	if (what & EV_READ)
		drain(&x->game);
	if (x->game.err || x->game.finished == NPAIRS)
		event_base_loopbreak(x->base);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct ctx *x = arg;

	(void)fd;
	(void)what;
	x->timed_out = true;
	event_base_loopbreak(x->base);
}

/* Play the game in a libevent loop whose only I/O event is rd_fd(). */
static int run_loop(struct ctx *x)
{
	struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000, .tv_usec = TIMEOUT_MS % 1000 * 1000 };
	struct event *rd_ev = NULL, *timer = NULL;
	int r = -ENOMEM;

	x->base = event_base_new();
	if (!x->base)
		return -ENOMEM;
	rd_ev = event_new(x->base, rd_fd(x->game.rd), EV_READ | EV_PERSIST, on_readable, x);
	timer = evtimer_new(x->base, on_timeout, x);
	if (!rd_ev || !timer || event_add(rd_ev, NULL) < 0 || evtimer_add(timer, &tv) < 0)
		goto finish;
	/* Events that arrived during earlier calls (the rd_add calls) are held by the
	 * library and do not make rd_fd() readable: take them before the first wait. */
	drain(&x->game);
	r = x->game.err ? x->game.err : game_start(&x->game);
	if (r == 0 && event_base_dispatch(x->base) < 0)
		r = -EIO;
	if (r == 0)
		r = x->game.err;
finish:
	if (timer)
		event_free(timer);
	if (rd_ev)
		event_free(rd_ev);
	event_base_free(x->base);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ 0 },
	};
	const char *path = NULL;
	struct ctx x = { 0 };
	int o, r;

	while ((o = getopt_long(argc, argv, "s:", opts, NULL)) != -1) {
		if (o != 's') {
			fprintf(stderr, "usage: libevent-client [--socket PATH]\n");
			return 2;
		}
		path = optarg;
	}
	r = rd_open(&x.game.rd, path);
	if (r < 0) {
		fprintf(stderr, "libevent-client: cannot reach readyd: %s\n", strerror(-r));
		return 1;
	}
	r = game_setup(&x.game);
	if (r == 0)
		r = run_loop(&x);
	if (r < 0)
		fprintf(stderr, "libevent-client: %s\n", strerror(-r));
	else if (x.game.finished < NPAIRS) {
		fprintf(stderr, "libevent-client: %s with %d of %d pairs done\n",
			x.timed_out ? "timed out" : "the loop ended", x.game.finished, NPAIRS);
		r = -ETIMEDOUT;
	} else
		printf("libevent-client: %d socket pairs served through readyd, %d rounds each, "
		       "in %u wakeup%s of the event\n", NPAIRS, ROUNDS, x.wakeups,
		       x.wakeups == 1 ? "" : "s");
	game_end(&x.game);
	rd_close(x.game.rd);
	return r < 0 ? 1 : 0;
}
