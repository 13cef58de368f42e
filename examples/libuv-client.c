/* libuv-client: readyd inside a libuv loop. The connection's fd sits in a uv_poll_t;
 * when it is readable, the callback drains events with rd_wait(..., 0). They drive four
 * socket pairs, every end registered with readyd: each pair plays three rounds of
 * ping and echo, and the program exits 0 once every pair has played them all.
 *
 *   libuv-client [--socket PATH]
 *
 * The loop never watches the socket pairs itself: all their readiness comes from
 * readyd. uv_poll_init makes the connection non-blocking, which libreadyd allows
 * (libreadyd(3), NOTES). */
#include <errno.h>
#include <getopt.h>
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

static void on_readable(uv_poll_t *h, int status, int events)
{
	struct ctx *x = h->data;

	x->wakeups++;
	if (status < 0)
		x->game.err = -EIO;
	else if (events & UV_READABLE)
		drain(&x->game);
	if (x->game.err || x->game.finished == NPAIRS)
		uv_stop(h->loop);
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
	r = uv_poll_init(&loop, &x->poll, rd_fd(x->game.rd));
	if (r < 0)
		goto out_loop;
	uv_timer_init(&loop, &x->timer);
	x->poll.data = x->timer.data = x;
	uv_poll_start(&x->poll, UV_READABLE, on_readable);
	uv_timer_start(&x->timer, on_timeout, TIMEOUT_MS, 0);
	/* Events that arrived during earlier calls (the rd_add calls) are held by the
	 * library and do not make rd_fd() readable: take them before the first wait. */
	drain(&x->game);
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
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ 0 },
	};
	const char *path = NULL;
	struct ctx x = { 0 };
	int o, r;

	while ((o = getopt_long(argc, argv, "s:", opts, NULL)) != -1) {
		if (o != 's') {
			fprintf(stderr, "usage: libuv-client [--socket PATH]\n");
			return 2;
		}
		path = optarg;
	}
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
		       "in %u wakeup%s of the uv_poll_t\n", NPAIRS, ROUNDS, x.wakeups,
		       x.wakeups == 1 ? "" : "s");
	game_end(&x.game);
	rd_close(x.game.rd);
	return r < 0 ? 1 : 0;
}
