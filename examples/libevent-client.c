/* libevent-client: readyd inside a libevent loop. The connection's fd is a persistent
 * read event; when it fires, the callback drains events with rd_wait(..., 0). They drive
 * four socket pairs, every end registered with readyd: each pair plays three rounds (or
 * N) of ping and echo, and the program exits 0 once every pair has played them all.
 *
 *   libevent-client [--socket PATH] [--rounds N]
 *
 * readyd may be restarted meanwhile: the library connects again and replays the
 * registrations, and the callback deletes and adds again the event on the new socket.
 *
 * The loop never watches the socket pairs itself: all their readiness comes from
 * readyd. */
#include <errno.h>
#include <event2/event.h>
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
	struct event *rd_ev, *timer;
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
	if (x->game.err || x->game.finished == NPAIRS) {
		event_base_loopbreak(x->base);
		return;
	}
	if (x->game.rewatch) {
		/* Same fd number, new socket: epoll forgot the old one when it was closed. */
		x->game.rewatch = false;
		if (event_del(x->rd_ev) < 0 || event_add(x->rd_ev, NULL) < 0) {
			x->game.err = -EIO;
			event_base_loopbreak(x->base);
			return;
		}
	}
	struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000, .tv_usec = TIMEOUT_MS % 1000 * 1000 };
	evtimer_add(x->timer, &tv); /* counts from the last wakeup */
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

	/* Events that arrived during earlier calls (the rd_add calls) are held by the
	 * library and do not make rd_fd() readable: take them before the first wait, and
	 * before watching rd_fd(), which this may replace with a new socket. */
	drain(&x->game);
	x->game.rewatch = false;
	x->base = event_base_new();
	if (!x->base)
		return -ENOMEM;
	rd_ev = event_new(x->base, rd_fd(x->game.rd), EV_READ | EV_PERSIST, on_readable, x);
	timer = evtimer_new(x->base, on_timeout, x);
	x->rd_ev = rd_ev;
	x->timer = timer;
	if (!rd_ev || !timer || event_add(rd_ev, NULL) < 0 || evtimer_add(timer, &tv) < 0)
		goto finish;
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
	const char *path;
	struct ctx x = { 0 };
	int r;

	if (game_options(&x.game, argc, argv, "libevent-client", &path) != 0)
		return 2;
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
		       "in %u wakeup%s of the event, %u reconnection%s\n", NPAIRS, x.game.rounds,
		       x.wakeups, x.wakeups == 1 ? "" : "s", x.game.reconnects,
		       x.game.reconnects == 1 ? "" : "s");
	game_end(&x.game);
	rd_close(x.game.rd);
	return r < 0 ? 1 : 0;
}
