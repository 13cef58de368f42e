/* The bystander of the hostile suites: a well-behaved library client, connected before
 * the offender acts, that must not notice it: it still gets a new event for its pipe, and
 * still gets replies. */
#ifndef READYD_TESTS_BYSTANDER_H
#define READYD_TESTS_BYSTANDER_H

#include <stdint.h>

#include "../client/readyd.h"

struct bystander {
	rd_client *c;
	int p[2];          /* its registered pipe: p[0] under 'token', RD_READABLE, edge */
	uint64_t token;
	uint32_t last_tick;
};

void bystander_open(struct bystander *b, const char *sock);
/* A byte written to its pipe reaches it as a new event (a larger tick than any it saw
 * before, so a stale or spurious record does not count). */
void bystander_event(struct bystander *b);
/* Requests still get replies: an add and a delete round trip. */
void bystander_roundtrip(struct bystander *b);
/* Both of the above. */
void bystander_check(struct bystander *b);
void bystander_close(struct bystander *b);

#endif
