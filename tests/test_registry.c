/* Unit tests of the registration slab, the token map and the ready queue
 * (daemon/registry.c). Random inputs come from a fixed-seed generator, so every run
 * exercises the same sequence. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/registry.h"
#include "fdcheck.h"


/* ---- helpers ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t seed)
{
	rng_state = seed ? seed : 1;
}

/* xorshift64* */
static uint64_t rng(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

static void shuffle(uint32_t *a, uint32_t n)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(rng() % i);
		uint32_t t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

static uint32_t alloc_slot(struct rdd_slab *s)
{
	uint32_t slot = RDD_NIL;
	assert_int_equal(rdd_slab_alloc(s, &slot), 0);
	assert_true(slot != RDD_NIL);
	return slot;
}

/* ---- slab ---- */

static void test_slab_alloc_fresh(void **state)
{
	(void)state;
	struct rdd_slab s;
	assert_int_equal(rdd_slab_init(&s), 0);
	/* Nothing is live in an empty slab. */
	assert_null(rdd_slab_lookup(&s, 0, 0));
	assert_null(rdd_slab_lookup(&s, RDD_NIL, 0));

	uint32_t a = alloc_slot(&s), b = alloc_slot(&s);
	assert_int_not_equal(a, b);
	assert_int_equal(s.used, 2);
	struct rdd_reg *r = rdd_slab_at(&s, a);
	assert_int_equal(r->fd, -1);
	assert_true(r->token == 0);
	assert_int_equal(r->tick, 0);
	assert_int_equal(r->interest, 0);
	assert_int_equal(r->flags, 0);
	assert_int_equal(r->pending, 0);
	assert_int_equal(r->state, RDD_REG_LIVE);
	assert_ptr_equal(rdd_slab_lookup(&s, a, r->gen), r);
	assert_ptr_equal(rdd_slab_lookup(&s, b, rdd_slab_at(&s, b)->gen), rdd_slab_at(&s, b));
	/* Out of range and never-allocated slots are not live. */
	assert_null(rdd_slab_lookup(&s, s.cap, 0));
	assert_null(rdd_slab_lookup(&s, RDD_NIL, 0));
	for (uint32_t i = 0; i < s.cap; i++)
		if (i != a && i != b)
			assert_null(rdd_slab_lookup(&s, i, 0));
	rdd_slab_fini(&s);
	/* fini leaves a usable empty slab. */
	assert_null(rdd_slab_lookup(&s, a, 0));
	assert_int_equal(s.used, 0);
	rdd_slab_fini(&s);
}

/* A (slot, gen) name stops working when the slot is freed, and stays dead when the slot is
 * reused for another registration. */
static void test_slab_stale_lookup(void **state)
{
	(void)state;
	struct rdd_slab s;
	rdd_slab_init(&s);
	uint32_t a = alloc_slot(&s);
	uint32_t g0 = rdd_slab_at(&s, a)->gen;
	rdd_slab_at(&s, a)->token = 77;
	rdd_slab_at(&s, a)->fd = 5;
	assert_non_null(rdd_slab_lookup(&s, a, g0));

	rdd_slab_free(&s, a);
	assert_int_equal(s.used, 0);
	assert_null(rdd_slab_lookup(&s, a, g0));
	assert_int_equal(rdd_slab_at(&s, a)->fd, -1);

	/* Fill the slab: 'a' comes back to someone with a new generation. */
	uint32_t cap = s.cap;
	while (s.used < cap)
		alloc_slot(&s);
	assert_int_equal(s.cap, cap);
	uint32_t g1 = rdd_slab_at(&s, a)->gen;
	assert_int_not_equal(g1, g0);
	assert_null(rdd_slab_lookup(&s, a, g0));
	assert_ptr_equal(rdd_slab_lookup(&s, a, g1), rdd_slab_at(&s, a));
	/* The new registration starts clean. */
	assert_true(rdd_slab_at(&s, a)->token == 0);
	assert_int_equal(rdd_slab_at(&s, a)->fd, -1);
	assert_int_equal(rdd_slab_at(&s, a)->state, RDD_REG_LIVE);

	/* Free it while the slab is full: it is the only free slot, so the next allocation
	 * reuses it, and neither older name works. */
	rdd_slab_free(&s, a);
	assert_null(rdd_slab_lookup(&s, a, g0));
	assert_null(rdd_slab_lookup(&s, a, g1));
	uint32_t again = alloc_slot(&s);
	assert_int_equal(again, a);
	assert_int_equal(s.cap, cap);
	uint32_t g2 = rdd_slab_at(&s, a)->gen;
	assert_int_not_equal(g2, g1);
	assert_int_not_equal(g2, g0);
	assert_null(rdd_slab_lookup(&s, a, g0));
	assert_null(rdd_slab_lookup(&s, a, g1));
	assert_ptr_equal(rdd_slab_lookup(&s, a, g2), rdd_slab_at(&s, a));
	rdd_slab_fini(&s);
}

/* Generations travel in 24 bits of epoll_data: lookups ignore the bits above, and the
 * generation itself never leaves the 24 bits, wrapping to 0 after 2^24 frees. */
static void test_slab_gen_24_bits(void **state)
{
	(void)state;
	struct rdd_slab s;
	rdd_slab_init(&s);
	uint32_t a = alloc_slot(&s);
	uint32_t g0 = rdd_slab_at(&s, a)->gen;
	struct rdd_reg *r = rdd_slab_at(&s, a);
	assert_ptr_equal(rdd_slab_lookup(&s, a, g0 | 0x01000000u), r);
	assert_ptr_equal(rdd_slab_lookup(&s, a, g0 | 0xff000000u), r);
	assert_null(rdd_slab_lookup(&s, a, (g0 + 1) | 0xff000000u));

	/* Cycle the same slot through every generation. The slab is kept full, so the slot
	 * just freed is the only free one and the next allocation must reuse it. */
	while (s.used < s.cap)
		alloc_slot(&s);
	uint32_t cap = s.cap;
	uint32_t prev = g0;
	for (uint32_t i = 1; i <= RDD_GEN_MASK + 1u; i++) {
		rdd_slab_free(&s, a);
		uint32_t b = alloc_slot(&s);
		assert_int_equal(b, a);
		uint32_t g = rdd_slab_at(&s, a)->gen;
		if (g > RDD_GEN_MASK || g == prev)
			fail_msg("generation %u after %u frees (previous %u)", g, i, prev);
		prev = g;
		if (i == RDD_GEN_MASK) {
			/* One before wrapping: the largest 24-bit value. */
			assert_int_equal(g, (g0 + RDD_GEN_MASK) & RDD_GEN_MASK);
		}
	}
	assert_int_equal(s.cap, cap);
	assert_int_equal(prev, g0);
	assert_ptr_equal(rdd_slab_lookup(&s, a, g0), rdd_slab_at(&s, a));
	rdd_slab_fini(&s);
}

/* Growing the slab (realloc) keeps every registration's contents and name. */
static void test_slab_growth_preserves(void **state)
{
	(void)state;
	struct rdd_slab s;
	rdd_slab_init(&s);
	enum { N = 5000 };
	static uint32_t slot[N], gen[N];
	static uint8_t seen[N];
	memset(seen, 0, sizeof(seen));
	uint32_t grew = 0, cap = 0;
	for (uint32_t i = 0; i < N; i++) {
		slot[i] = alloc_slot(&s);
		if (s.cap != cap) {
			grew++;
			cap = s.cap;
		}
		assert_true(slot[i] < s.cap);
		assert_int_equal(seen[slot[i]], 0);
		seen[slot[i]] = 1;
		struct rdd_reg *r = rdd_slab_at(&s, slot[i]);
		r->token = 0x5eed000000000000ull | i;
		r->fd = (int32_t)(i + 3);
		r->owner = i * 7;
		r->tick = ~i;
		r->interest = (uint8_t)(i & 7);
		r->flags = (uint8_t)(i & 1);
		r->pending = (uint8_t)(i & 0x3f);
		gen[i] = r->gen;
		/* Free every third one and check it is gone, so growth also happens with
		 * holes in the free list. */
		if (i % 3 == 2) {
			rdd_slab_free(&s, slot[i]);
			seen[slot[i]] = 0;
			assert_null(rdd_slab_lookup(&s, slot[i], gen[i]));
			slot[i] = RDD_NIL;
		}
	}
	assert_true(grew >= 3);
	assert_int_equal(s.used, N - N / 3);
	for (uint32_t i = 0; i < N; i++) {
		if (slot[i] == RDD_NIL)
			continue;
		struct rdd_reg *r = rdd_slab_lookup(&s, slot[i], gen[i]);
		assert_non_null(r);
		assert_true(r->token == (0x5eed000000000000ull | i));
		assert_int_equal(r->fd, i + 3);
		assert_int_equal(r->owner, i * 7);
		assert_int_equal(r->tick, ~i);
		assert_int_equal(r->interest, i & 7);
		assert_int_equal(r->flags, i & 1);
		assert_int_equal(r->pending, i & 0x3f);
		assert_int_equal(r->state, RDD_REG_LIVE);
	}
	rdd_slab_fini(&s);
}

/* Free everything, allocate it all back: no slot is handed out twice and none is lost. */
static void test_slab_free_list(void **state)
{
	(void)state;
	struct rdd_slab s;
	rdd_slab_init(&s);
	enum { N = 300 };
	uint32_t slot[N];
	for (uint32_t i = 0; i < N; i++)
		slot[i] = alloc_slot(&s);
	uint32_t cap = s.cap;
	rng_seed(42);
	shuffle(slot, N);
	for (uint32_t i = 0; i < N; i++)
		rdd_slab_free(&s, slot[i]);
	assert_int_equal(s.used, 0);
	static uint8_t seen[1024];
	memset(seen, 0, sizeof(seen));
	assert_true(cap <= sizeof(seen));
	for (uint32_t i = 0; i < cap; i++) {
		uint32_t x = alloc_slot(&s);
		assert_true(x < cap);
		assert_int_equal(seen[x], 0);
		seen[x] = 1;
	}
	assert_int_equal(s.cap, cap); /* every slot reused before growing */
	assert_int_equal(s.used, cap);
	uint32_t x = alloc_slot(&s);
	assert_true(s.cap > cap);
	assert_true(x >= cap);
	rdd_slab_fini(&s);
}

/* ---- token map ---- */

struct fixture {
	struct rdd_slab s;
	struct rdd_tokmap m;
	uint32_t *slot;  /* slot of token i */
	uint64_t *tok;
	uint8_t *in;     /* token i is in the map */
	uint32_t n;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The map takes distinct tokens only; make sure a test's token set is one. */
static void assert_distinct(const uint64_t *tok, uint32_t n)
{
	uint64_t *c = malloc((size_t)n * sizeof(*c));
	assert_non_null(c);
	memcpy(c, tok, (size_t)n * sizeof(*c));
	qsort(c, n, sizeof(*c), cmp_u64);
	for (uint32_t i = 1; i < n; i++)
		if (c[i] == c[i - 1])
			fail_msg("test bug: token %#llx appears twice", (unsigned long long)c[i]);
	free(c);
}

static void fx_init(struct fixture *f, const uint64_t *tok, uint32_t n)
{
	assert_distinct(tok, n);
	rdd_slab_init(&f->s);
	rdd_tokmap_init(&f->m);
	f->n = n;
	f->slot = calloc(n, sizeof(*f->slot));
	f->tok = calloc(n, sizeof(*f->tok));
	f->in = calloc(n, 1);
	assert_true(f->slot && f->tok && f->in);
	for (uint32_t i = 0; i < n; i++) {
		f->tok[i] = tok[i];
		f->slot[i] = alloc_slot(&f->s);
		rdd_slab_at(&f->s, f->slot[i])->token = tok[i];
	}
}

static void fx_fini(struct fixture *f)
{
	rdd_tokmap_fini(&f->m);
	rdd_slab_fini(&f->s);
	free(f->slot);
	free(f->tok);
	free(f->in);
}

static void fx_insert(struct fixture *f, uint32_t i)
{
	assert_int_equal(rdd_tokmap_find(&f->m, &f->s, f->tok[i]), RDD_NIL);
	uint32_t before = f->m.count;
	assert_int_equal(rdd_tokmap_insert(&f->m, &f->s, f->slot[i]), 0);
	assert_int_equal(f->m.count, before + 1);
	f->in[i] = 1;
	assert_int_equal(rdd_tokmap_find(&f->m, &f->s, f->tok[i]), f->slot[i]);
}

static void fx_remove(struct fixture *f, uint32_t i)
{
	uint32_t before = f->m.count;
	rdd_tokmap_remove(&f->m, &f->s, f->slot[i]);
	assert_int_equal(f->m.count, before - 1);
	f->in[i] = 0;
	assert_int_equal(rdd_tokmap_find(&f->m, &f->s, f->tok[i]), RDD_NIL);
}

/* Every token in the map is found at its slot, every other one is not. */
static void fx_check_all(const struct fixture *f)
{
	for (uint32_t i = 0; i < f->n; i++) {
		uint32_t got = rdd_tokmap_find(&f->m, &f->s, f->tok[i]);
		uint32_t want = f->in[i] ? f->slot[i] : RDD_NIL;
		if (got != want)
			fail_msg("token %#llx (#%u): find gave %u, want %u (%u in the map)",
				 (unsigned long long)f->tok[i], i, got, want, f->m.count);
	}
}

/* Insert all, remove all in a random order checking after each removal that the removed
 * token is gone and (when 'full_every' divides the step) every other one is still found. */
static void fx_churn(const uint64_t *tok, uint32_t n, uint64_t seed, uint32_t full_every)
{
	struct fixture f;
	fx_init(&f, tok, n);
	for (uint32_t i = 0; i < n; i++)
		fx_insert(&f, i);
	assert_int_equal(f.m.count, n);
	fx_check_all(&f);

	uint32_t *order = calloc(n, sizeof(*order));
	assert_non_null(order);
	for (uint32_t i = 0; i < n; i++)
		order[i] = i;
	rng_seed(seed);
	shuffle(order, n);
	for (uint32_t k = 0; k < n; k++) {
		fx_remove(&f, order[k]);
		/* The next few still present are found (cheap check at every step). */
		for (uint32_t j = k + 1; j < n && j < k + 4; j++)
			assert_int_equal(rdd_tokmap_find(&f.m, &f.s, f.tok[order[j]]), f.slot[order[j]]);
		if (full_every && (k % full_every == 0 || k + 1 == n))
			fx_check_all(&f);
	}
	assert_int_equal(f.m.count, 0);

	/* The emptied map is reusable: put half back, in the shuffled order. */
	for (uint32_t k = 0; k < n / 2; k++)
		fx_insert(&f, order[k]);
	fx_check_all(&f);
	free(order);
	fx_fini(&f);
}

static void test_tokmap_basic(void **state)
{
	(void)state;
	struct rdd_slab s;
	struct rdd_tokmap m;
	rdd_slab_init(&s);
	rdd_tokmap_init(&m);
	/* Empty map: nothing found, removal is harmless. */
	assert_int_equal(rdd_tokmap_find(&m, &s, 0), RDD_NIL);
	assert_int_equal(rdd_tokmap_find(&m, &s, UINT64_MAX), RDD_NIL);

	uint32_t a = alloc_slot(&s), b = alloc_slot(&s), c = alloc_slot(&s);
	rdd_tokmap_remove(&m, &s, a);
	assert_int_equal(m.count, 0);
	rdd_slab_at(&s, a)->token = 0; /* token 0 is an ordinary token */
	rdd_slab_at(&s, b)->token = UINT64_MAX;
	rdd_slab_at(&s, c)->token = 0xdeadbeefcafef00dull;
	assert_int_equal(rdd_tokmap_insert(&m, &s, a), 0);
	assert_int_equal(rdd_tokmap_insert(&m, &s, b), 0);
	assert_int_equal(m.count, 2);
	assert_int_equal(rdd_tokmap_find(&m, &s, 0), a);
	assert_int_equal(rdd_tokmap_find(&m, &s, UINT64_MAX), b);
	assert_int_equal(rdd_tokmap_find(&m, &s, 0xdeadbeefcafef00dull), RDD_NIL);
	assert_int_equal(rdd_tokmap_find(&m, &s, 1), RDD_NIL);

	/* Removing a slot that is not in the map changes nothing. */
	rdd_tokmap_remove(&m, &s, c);
	assert_int_equal(m.count, 2);
	assert_int_equal(rdd_tokmap_find(&m, &s, 0), a);
	assert_int_equal(rdd_tokmap_find(&m, &s, UINT64_MAX), b);

	rdd_tokmap_remove(&m, &s, a);
	assert_int_equal(m.count, 1);
	assert_int_equal(rdd_tokmap_find(&m, &s, 0), RDD_NIL);
	assert_int_equal(rdd_tokmap_find(&m, &s, UINT64_MAX), b);
	/* The same token can come back on another slot. */
	rdd_slab_at(&s, c)->token = 0;
	assert_int_equal(rdd_tokmap_insert(&m, &s, c), 0);
	assert_int_equal(rdd_tokmap_find(&m, &s, 0), c);
	rdd_tokmap_fini(&m);
	assert_int_equal(rdd_tokmap_find(&m, &s, UINT64_MAX), RDD_NIL);
	rdd_tokmap_fini(&m);
	rdd_slab_fini(&s);
}

/* 100000 random tokens (plus the extremes), inserted, then removed in random order. */
static void test_tokmap_many_random(void **state)
{
	(void)state;
	enum { N = 100000 };
	uint64_t *tok = malloc(N * sizeof(*tok));
	assert_non_null(tok);
	rng_seed(0x1234567);
	tok[0] = 0;
	tok[1] = UINT64_MAX;
	tok[2] = 1;
	tok[3] = 0x8000000000000000ull;
	for (uint32_t i = 4; i < N; i++) {
		/* Distinct (checked by fx_init): xorshift64* does not repeat within its period;
		 * the extremes above are avoided. */
		uint64_t t;
		do
			t = rng();
		while (t == 0 || t == UINT64_MAX || t == 1 || t == 0x8000000000000000ull);
		tok[i] = t;
	}
	fx_churn(tok, N, 99, 10007);
	free(tok);
}

/* Smaller random set with a full check after every removal. */
static void test_tokmap_random_full_checks(void **state)
{
	(void)state;
	enum { N = 2000 };
	uint64_t tok[N];
	rng_seed(777);
	for (uint32_t i = 0; i < N; i++)
		tok[i] = rng();
	fx_churn(tok, N, 5, 1);
}

/* Tokens that differ only in their high bits, or only in their low bits, or are small
 * integers and pointers: what real clients use. */
static void test_tokmap_structured_tokens(void **state)
{
	(void)state;
	enum { N = 4096 };
	static uint64_t tok[N];
	for (uint32_t i = 0; i < 1024; i++) {
		tok[i] = (uint64_t)i << 32;            /* low 32 bits all zero */
		tok[1024 + i] = (uint64_t)(i + 1) << 53; /* only the top bits differ */
		tok[2048 + i] = i;                     /* small integers, fd numbers */
		tok[3072 + i] = 0x00007f0000000000ull + (uint64_t)i * 64; /* aligned pointers */
	}
	/* (i << 32) at i = 0 and i (small) at 0 collide: make the first set start at 1. */
	tok[0] = (uint64_t)1024 << 32;
	fx_churn(tok, N, 17, 1);
}

/* Multiplicative inverse of an odd number modulo 2^64 (Newton's iteration). */
static uint64_t inverse64(uint64_t a)
{
	uint64_t x = a;
	for (int i = 0; i < 6; i++)
		x *= 2 - a * x;
	return x;
}

/* Tokens that all hash to the same home bucket, for the current Fibonacci hash (token times
 * 0x9e3779b97f4a7c15, high 32 bits): one at the last bucket, so the probe run wraps past
 * the end of the table, and one at bucket 0, so both runs merge. Deleting from such runs
 * is where backward-shift deletion goes wrong. Whatever the hash, they are valid tokens and
 * the test still checks the map. */
static void test_tokmap_colliding_clusters(void **state)
{
	(void)state;
	const uint64_t golden = 0x9e3779b97f4a7c15ull;
	const uint64_t inv = inverse64(golden);
	assert_true(inv * golden == 1);
	enum { HALF = 300, N = 2 * HALF };
	uint64_t tok[N];
	for (uint32_t i = 0; i < HALF; i++) {
		/* token * golden = 0xffffffff << 32 | i: hash 0xffffffff, the last bucket */
		tok[2 * i] = inv * (0xffffffff00000000ull | i);
		/* token * golden = i: hash 0, the first bucket */
		tok[2 * i + 1] = inv * (uint64_t)(i + 1);
	}
	for (uint64_t seed = 1; seed <= 3; seed++)
		fx_churn(tok, N, seed, 1);

	/* Remove from the front of the wrapped run first, then from the back. */
	struct fixture f;
	fx_init(&f, tok, N);
	for (uint32_t i = 0; i < N; i++)
		fx_insert(&f, i);
	for (uint32_t i = 0; i < N; i += 2) {
		fx_remove(&f, i);
		fx_check_all(&f);
	}
	for (uint32_t i = N - 1; i < N; i -= 2) {
		fx_remove(&f, i);
		fx_check_all(&f);
	}
	assert_int_equal(f.m.count, 0);
	fx_fini(&f);
}

/* Interleaved inserts and removes with a model, so the map grows while holes exist. */
static void test_tokmap_interleaved(void **state)
{
	(void)state;
	enum { N = 3000 };
	static uint64_t tok[N];
	rng_seed(31337);
	for (uint32_t i = 0; i < N; i++)
		tok[i] = (rng() & 0xffff0000000000ffull) | ((uint64_t)i << 8);
	struct fixture f;
	fx_init(&f, tok, N);
	for (uint32_t step = 0; step < 20000; step++) {
		uint32_t i = (uint32_t)(rng() % N);
		if (f.in[i])
			fx_remove(&f, i);
		else
			fx_insert(&f, i);
		if (step % 500 == 0)
			fx_check_all(&f);
	}
	fx_check_all(&f);
	fx_fini(&f);
}

/* ---- ready queue ---- */

static void q_expect(struct rdd_queue *q, struct rdd_slab *s, const uint32_t *want, uint32_t n)
{
	assert_int_equal(q->len, n);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t got = rdd_queue_pop(q, s);
		assert_int_equal(got, want[i]);
		assert_int_equal(q->len, n - i - 1);
		assert_false(rdd_slab_at(s, got)->state & RDD_REG_QUEUED);
		assert_true(rdd_slab_at(s, got)->state & RDD_REG_LIVE);
	}
	assert_int_equal(rdd_queue_pop(q, s), RDD_NIL);
	assert_int_equal(q->len, 0);
	assert_int_equal(q->head, RDD_NIL);
	assert_int_equal(q->tail, RDD_NIL);
}

static void q_setup(struct rdd_slab *s, struct rdd_queue *q, uint32_t *slot, uint32_t n)
{
	rdd_slab_init(s);
	rdd_queue_init(q);
	for (uint32_t i = 0; i < n; i++)
		slot[i] = alloc_slot(s);
}

static void test_queue_push_once_fifo(void **state)
{
	(void)state;
	struct rdd_slab s;
	struct rdd_queue q;
	uint32_t r[5];
	q_setup(&s, &q, r, 5);
	assert_int_equal(rdd_queue_pop(&q, &s), RDD_NIL);
	assert_int_equal(q.len, 0);

	/* Order of readiness, not of slots. */
	assert_true(rdd_queue_push(&q, &s, r[3]));
	assert_true(rdd_queue_push(&q, &s, r[0]));
	assert_int_equal(q.len, 2);
	assert_true(rdd_slab_at(&s, r[3])->state & RDD_REG_QUEUED);
	/* A registration is queued at most once. */
	assert_false(rdd_queue_push(&q, &s, r[3]));
	assert_false(rdd_queue_push(&q, &s, r[0]));
	assert_int_equal(q.len, 2);
	assert_true(rdd_queue_push(&q, &s, r[4]));
	assert_true(rdd_queue_push(&q, &s, r[1]));
	assert_false(rdd_queue_push(&q, &s, r[3]));
	assert_false(rdd_queue_push(&q, &s, r[1]));
	assert_int_equal(q.len, 4);
	q_expect(&q, &s, (uint32_t[]){ r[3], r[0], r[4], r[1] }, 4);
	rdd_slab_fini(&s);
}

static void test_queue_remove(void **state)
{
	(void)state;
	struct rdd_slab s;
	struct rdd_queue q;
	uint32_t r[5];
	q_setup(&s, &q, r, 5);
	for (int i = 0; i < 5; i++)
		assert_true(rdd_queue_push(&q, &s, r[i]));

	rdd_queue_remove(&q, &s, r[2]); /* middle */
	assert_int_equal(q.len, 4);
	assert_false(rdd_slab_at(&s, r[2])->state & RDD_REG_QUEUED);
	rdd_queue_remove(&q, &s, r[0]); /* head */
	assert_int_equal(q.head, r[1]);
	rdd_queue_remove(&q, &s, r[4]); /* tail */
	assert_int_equal(q.tail, r[3]);
	assert_int_equal(q.len, 2);
	/* Removing something not queued changes nothing. */
	rdd_queue_remove(&q, &s, r[2]);
	rdd_queue_remove(&q, &s, r[4]);
	assert_int_equal(q.len, 2);
	/* A removed registration can be queued again, at the tail. */
	assert_true(rdd_queue_push(&q, &s, r[2]));
	q_expect(&q, &s, (uint32_t[]){ r[1], r[3], r[2] }, 3);

	/* The only element: head and tail both go. */
	assert_true(rdd_queue_push(&q, &s, r[0]));
	rdd_queue_remove(&q, &s, r[0]);
	assert_int_equal(q.len, 0);
	assert_int_equal(q.head, RDD_NIL);
	assert_int_equal(q.tail, RDD_NIL);
	assert_int_equal(rdd_queue_pop(&q, &s), RDD_NIL);
	assert_true(rdd_queue_push(&q, &s, r[4]));
	assert_true(rdd_queue_push(&q, &s, r[0]));
	q_expect(&q, &s, (uint32_t[]){ r[4], r[0] }, 2);
	rdd_slab_fini(&s);
}

static void test_queue_repush_after_pop(void **state)
{
	(void)state;
	struct rdd_slab s;
	struct rdd_queue q;
	uint32_t r[3];
	q_setup(&s, &q, r, 3);
	for (int i = 0; i < 3; i++)
		assert_true(rdd_queue_push(&q, &s, r[i]));
	assert_int_equal(rdd_queue_pop(&q, &s), r[0]);
	assert_int_equal(q.len, 2);
	/* Popped means no longer queued: it goes to the back. */
	assert_true(rdd_queue_push(&q, &s, r[0]));
	assert_false(rdd_queue_push(&q, &s, r[0]));
	assert_int_equal(q.len, 3);
	q_expect(&q, &s, (uint32_t[]){ r[1], r[2], r[0] }, 3);
	/* After draining, the queue starts over. */
	assert_true(rdd_queue_push(&q, &s, r[2]));
	assert_true(rdd_queue_push(&q, &s, r[1]));
	q_expect(&q, &s, (uint32_t[]){ r[2], r[1] }, 2);
	rdd_slab_fini(&s);
}

/* Two clients' queues share one slab without disturbing each other. */
static void test_queue_two_queues(void **state)
{
	(void)state;
	struct rdd_slab s;
	struct rdd_queue a, b;
	uint32_t r[6];
	q_setup(&s, &a, r, 6);
	rdd_queue_init(&b);
	for (int i = 0; i < 6; i++)
		assert_true(rdd_queue_push(i % 2 ? &b : &a, &s, r[i]));
	rdd_queue_remove(&b, &s, r[3]);
	q_expect(&a, &s, (uint32_t[]){ r[0], r[2], r[4] }, 3);
	q_expect(&b, &s, (uint32_t[]){ r[1], r[5] }, 2);
	rdd_slab_fini(&s);
}

/* Random pushes, removes and pops against an array model. */
static void test_queue_model(void **state)
{
	(void)state;
	enum { N = 64 };
	struct rdd_slab s;
	struct rdd_queue q;
	uint32_t r[N];
	q_setup(&s, &q, r, N);
	uint32_t model[N];
	uint32_t len = 0;
	rng_seed(2024);
	for (int step = 0; step < 100000; step++) {
		uint32_t op = (uint32_t)(rng() % 3);
		uint32_t i = (uint32_t)(rng() % N);
		uint32_t pos = RDD_NIL;
		for (uint32_t k = 0; k < len; k++)
			if (model[k] == r[i])
				pos = k;
		if (op == 0) {
			bool pushed = rdd_queue_push(&q, &s, r[i]);
			assert_int_equal(pushed, pos == RDD_NIL);
			if (pushed)
				model[len++] = r[i];
		} else if (op == 1) {
			rdd_queue_remove(&q, &s, r[i]);
			if (pos != RDD_NIL) {
				memmove(model + pos, model + pos + 1, (len - pos - 1) * sizeof(*model));
				len--;
			}
		} else {
			uint32_t got = rdd_queue_pop(&q, &s);
			if (len == 0) {
				assert_int_equal(got, RDD_NIL);
			} else {
				assert_int_equal(got, model[0]);
				memmove(model, model + 1, (len - 1) * sizeof(*model));
				len--;
			}
		}
		assert_int_equal(q.len, len);
		assert_int_equal(q.head, len ? model[0] : RDD_NIL);
		assert_int_equal(q.tail, len ? model[len - 1] : RDD_NIL);
	}
	q_expect(&q, &s, model, len);
	rdd_slab_fini(&s);
}

#define T(f) cmocka_unit_test_setup_teardown(f, rdt_fd_setup, rdt_fd_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_slab_alloc_fresh),
		T(test_slab_stale_lookup),
		T(test_slab_gen_24_bits),
		T(test_slab_growth_preserves),
		T(test_slab_free_list),
		T(test_tokmap_basic),
		T(test_tokmap_many_random),
		T(test_tokmap_random_full_checks),
		T(test_tokmap_structured_tokens),
		T(test_tokmap_colliding_clusters),
		T(test_tokmap_interleaved),
		T(test_queue_push_once_fifo),
		T(test_queue_remove),
		T(test_queue_repush_after_pop),
		T(test_queue_two_queues),
		T(test_queue_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
