/* The bystander of the hostile suites (see bystander.h). */
#include "bystander.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

/* A bound on every wait for the daemon; never a timing assertion. */
#define WAIT_MS 5000

void bystander_open(struct bystander *b, const char *sock)
{
	memset(b, 0, sizeof(*b));
	b->p[0] = b->p[1] = -1;
	b->token = 0xb157a4de00000001ull;
	assert_int_equal(rd_open(&b->c, sock), 0);
	assert_int_equal(pipe2(b->p, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(rd_add(b->c, b->p[0], b->token, RD_READABLE, RD_EDGE), 0);
}

void bystander_event(struct bystander *b)
{
	struct rd_event ev[64];
	char buf[64];

	assert_int_equal(write(b->p[1], "x", 1), 1);
	for (int tries = 0; tries < 64; tries++) {
		int n = rd_wait(b->c, ev, 64, WAIT_MS);
		if (n <= 0)
			fail_msg("bystander: no event within %d ms (rd_wait %d)", WAIT_MS, n);
		for (int i = 0; i < n; i++) {
			if (ev[i].token == b->token && (ev[i].ready & RD_READABLE) &&
			    (b->last_tick == 0 || ev[i].tick > b->last_tick)) {
				b->last_tick = ev[i].tick;
				while (read(b->p[0], buf, sizeof(buf)) > 0)
					;
				return;
			}
		}
	}
	fail_msg("bystander: events came, but none for its pipe");
}

void bystander_roundtrip(struct bystander *b)
{
	int q[2];
	assert_int_equal(pipe2(q, O_CLOEXEC), 0);
	assert_int_equal(rd_add(b->c, q[0], b->token + 1, RD_READABLE, RD_EDGE), 0);
	assert_int_equal(rd_delete(b->c, b->token + 1), 0);
	close(q[0]);
	close(q[1]);
}

void bystander_check(struct bystander *b)
{
	bystander_event(b);
	bystander_roundtrip(b);
}

void bystander_close(struct bystander *b)
{
	rd_close(b->c);
	b->c = NULL;
	for (int i = 0; i < 2; i++) {
		if (b->p[i] >= 0)
			close(b->p[i]);
		b->p[i] = -1;
	}
}
