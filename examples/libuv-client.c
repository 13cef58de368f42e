/* libuv-client: readyd inside a libuv loop. The connection's fd sits in a uv_poll_t;
 * when it is readable, the callback drains events with rd_wait(..., 0). They drive four
 * socket pairs, every end registered with readyd: each pair plays three rounds (or N) of
 * ping and echo, and the program exits 0 once every pair has played them all.
 *
 *   libuv-client [--socket PATH] [--rounds N]
 *
 * readyd may be restarted meanwhile: the library connects again and replays the
 * registrations, and the callback stops and starts the uv_poll_t on the new socket.
 *
 * The loop never watches the socket pairs itself: all their readiness comes from
 * readyd. uv_poll_init makes the connection non-blocking, which libreadyd allows
 * (libreadyd(3), NOTES). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "readyd.h"

#include "pairgame.h"

/* ---- libuv ---- */

struct ctx {
	struct game game;
	uv_poll_t poll;
	uv_timer_t timer;
	unsigned wakeups; /* callbacks of the uv_poll_t */
	bool timed_out;
};

static void on_timeout(uv_timer_t *t);

static void on_readable(uv_poll_t *h, int status, int events)
{
	struct ctx *x = h->data;

	x->wakeups++;
	/* An error on the socket (libuv has stopped the handle) is the daemon gone with
	 * requests of ours unread: drain anyway, and the library connects again or fails. */
	if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)))
		drain(&x->game);
	if (x->game.err || x->game.finished == NPAIRS) {
		uv_stop(h->loop);
		return;
	}
	if (x->game.rewatch || status < 0) {
		/* Same fd number, new socket: epoll forgot the old one when it was closed. */
		x->game.rewatch = false;
		uv_poll_stop(h);
		if (uv_poll_start(h, UV_READABLE, on_readable) < 0) {
			x->game.err = -EIO;
			uv_stop(h->loop);
			return;
		}
	}
	uv_timer_start(&x->timer, on_timeout, TIMEOUT_MS, 0); /* counts from the last wakeup */
}

static void on_timeout(uv_timer_t *t)
{
	struct ctx *x = t->data;
	x->timed_out = true;
	uv_stop(t->loop);
}

/* Play the game in a libuv loop whose only I/O watcher is rd_fd(). */
static int run_loop(struct ctx *x)
{
	uv_loop_t loop;
	int r = uv_loop_init(&loop);
	if (r < 0)
		return r;
	/* Events that arrived during earlier calls (the rd_add calls) are held by the
	 * library and do not make rd_fd() readable: take them before the first wait, and
	 * before watching rd_fd(), which this may replace with a new socket. */
	drain(&x->game);
	x->game.rewatch = false;
	r = uv_poll_init(&loop, &x->poll, rd_fd(x->game.rd));
	if (r < 0)
		goto out_loop;
	uv_timer_init(&loop, &x->timer);
	x->poll.data = x->timer.data = x;
	r = uv_poll_start(&x->poll, UV_READABLE, on_readable);
	if (r < 0) {
		uv_close((uv_handle_t *)&x->poll, NULL);
		uv_close((uv_handle_t *)&x->timer, NULL);
		uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
		goto out_loop;
	}
	uv_timer_start(&x->timer, on_timeout, TIMEOUT_MS, 0);
	r = x->game.err ? x->game.err : game_start(&x->game);
	if (r == 0)
		uv_run(&loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&x->poll, NULL);
	uv_close((uv_handle_t *)&x->timer, NULL);
	uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
out_loop:
	uv_loop_close(&loop);
	return r < 0 ? r : x->game.err;
}

int main(int argc, char **argv)
{
	const char *path;
	struct ctx x = { 0 };
	int r;

	if (game_options(&x.game, argc, argv, "libuv-client", &path) != 0)
		return 2;
	r = rd_open(&x.game.rd, path);
	if (r < 0) {
		fprintf(stderr, "libuv-client: cannot reach readyd: %s\n", strerror(-r));
		return 1;
	}
	r = game_setup(&x.game);
	if (r == 0)
		r = run_loop(&x);
	if (r < 0)
		fprintf(stderr, "libuv-client: %s\n", strerror(-r));
	else if (x.game.finished < NPAIRS) {
		fprintf(stderr, "libuv-client: %s with %d of %d pairs done\n",
			x.timed_out ? "timed out" : "the loop ended", x.game.finished, NPAIRS);
		r = -ETIMEDOUT;
	} else
		printf("libuv-client: %d socket pairs served through readyd, %d rounds each, "
		       "in %u wakeup%s of the uv_poll_t, %u reconnection%s\n", NPAIRS, x.game.rounds,
		       x.wakeups, x.wakeups == 1 ? "" : "s", x.game.reconnects,
		       x.game.reconnects == 1 ? "" : "s");
	game_end(&x.game);
	rd_close(x.game.rd);
	return r < 0 ? 1 : 0;
}
