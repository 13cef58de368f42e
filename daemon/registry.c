/* The registration slab, the token map and the ready queue (see registry.h). */
#include "registry.h"

#include "fault.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#define SLAB_MIN 64u

int rdd_slab_init(struct rdd_slab *s)
{
	*s = (struct rdd_slab){ .free_head = RDD_NIL };
	return 0;
}

void rdd_slab_fini(struct rdd_slab *s)
{
	free(s->regs);
	*s = (struct rdd_slab){ .free_head = RDD_NIL };
}

/* Grow without touching the new slots: they are initialised one at a time as they are
 * first handed out (below the high-water mark), so pages of a large slab that no
 * registration has reached yet are never made resident. */
static int slab_grow(struct rdd_slab *s)
{
	uint32_t ncap = s->cap ? s->cap * 2 : SLAB_MIN;
	if (ncap <= s->cap || ncap > RDD_NIL / 2)
		return -ENOMEM;
	struct rdd_reg *n = realloc(s->regs, (size_t)ncap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	s->regs = n;
	s->cap = ncap;
	return 0;
}

int rdd_slab_alloc(struct rdd_slab *s, uint32_t *slot)
{
	uint32_t i, gen = 0;
	if (s->free_head != RDD_NIL) {
		/* Freed slots first, so the slab only grows when full. */
		i = s->free_head;
		s->free_head = s->regs[i].qnext;
		gen = s->regs[i].gen;
	} else {
		if (s->hwm == s->cap) {
			int r = slab_grow(s);
			if (r < 0)
				return r;
		}
		i = s->hwm++;
	}
	s->regs[i] = (struct rdd_reg){ .fd = -1, .gen = gen, .qnext = RDD_NIL, .qprev = RDD_NIL,
				       .state = RDD_REG_LIVE };
	s->used++;
	*slot = i;
	return 0;
}

void rdd_slab_free(struct rdd_slab *s, uint32_t slot)
{
	struct rdd_reg *r = &s->regs[slot];
	uint32_t gen = (r->gen + 1) & RDD_GEN_MASK;
	*r = (struct rdd_reg){ .fd = -1, .gen = gen, .qnext = s->free_head, .qprev = RDD_NIL };
	s->free_head = slot;
	s->used--;
}

struct rdd_reg *rdd_slab_lookup(struct rdd_slab *s, uint32_t slot, uint32_t gen)
{
	if (slot >= s->hwm)
		return NULL;
	struct rdd_reg *r = &s->regs[slot];
	if (!(r->state & RDD_REG_LIVE) || r->gen != (gen & RDD_GEN_MASK))
		return NULL;
	return r;
}

/* Fibonacci hashing: the home bucket is the top log2(capacity) bits of token * 2^64/phi,
 * which depend on every bit of the token, so tokens that differ only in high bits (or
 * only in low bits) still spread. */
static uint32_t home_of(uint64_t token, uint32_t mask)
{
	/* mask + 1 is a power of two >= 16: its log2 is 31 - clz (one instruction, where
	 * popcount without -mpopcnt is a library call). */
	unsigned bits = 31u - (unsigned)__builtin_clz(mask + 1);
	return (uint32_t)((token * 0x9e3779b97f4a7c15ull) >> (64 - bits));
}

void rdd_tokmap_init(struct rdd_tokmap *m)
{
	*m = (struct rdd_tokmap){ 0 };
}

void rdd_tokmap_fini(struct rdd_tokmap *m)
{
	free(m->slots);
	*m = (struct rdd_tokmap){ 0 };
}

uint32_t rdd_tokmap_find(const struct rdd_tokmap *m, const struct rdd_slab *s, uint64_t token)
{
	if (!m->slots)
		return RDD_NIL;
	for (uint32_t i = home_of(token, m->mask);; i = (i + 1) & m->mask) {
		uint32_t slot = m->slots[i];
		if (slot == RDD_NIL || s->regs[slot].token == token)
			return slot;
	}
}

static void place(uint32_t *slots, uint32_t mask, uint32_t slot, uint64_t token)
{
	uint32_t i = home_of(token, mask);
	while (slots[i] != RDD_NIL)
		i = (i + 1) & mask;
	slots[i] = slot;
}

int rdd_tokmap_insert(struct rdd_tokmap *m, const struct rdd_slab *s, uint32_t slot)
{
	uint32_t cap = m->slots ? m->mask + 1 : 0;
	/* Keep the load at most 1/2 so probes stay short. */
	if ((m->count + 1) * 2 > cap) {
		uint32_t ncap = cap ? cap * 2 : 16;
		if (ncap <= cap)
			return -ENOMEM;
		uint32_t *n = malloc((size_t)ncap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		memset(n, 0xff, (size_t)ncap * sizeof(*n));
		for (uint32_t i = 0; i < cap; i++)
			if (m->slots[i] != RDD_NIL)
				place(n, ncap - 1, m->slots[i], s->regs[m->slots[i]].token);
		free(m->slots);
		m->slots = n;
		m->mask = ncap - 1;
		/* A large old array below the mmap threshold would stay resident in the
		 * heap: give it back. Grows are rare (log n times), so is this. */
		if ((size_t)cap * sizeof(*n) >= 64 * 1024)
			malloc_trim(0);
	}
	place(m->slots, m->mask, slot, s->regs[slot].token);
	m->count++;
	return 0;
}

void rdd_tokmap_remove(struct rdd_tokmap *m, const struct rdd_slab *s, uint32_t slot)
{
	if (!m->slots)
		return;
	uint32_t i = home_of(s->regs[slot].token, m->mask);
	while (m->slots[i] != slot) {
		if (m->slots[i] == RDD_NIL)
			return;
		i = (i + 1) & m->mask;
	}
	/* Backward-shift deletion: pull later members of the probe run into the hole when
	 * their home position is at or before it. */
	uint32_t hole = i;
	for (uint32_t j = (i + 1) & m->mask; m->slots[j] != RDD_NIL; j = (j + 1) & m->mask) {
		uint32_t home = home_of(s->regs[m->slots[j]].token, m->mask);
		if (((j - home) & m->mask) >= ((j - hole) & m->mask)) {
			m->slots[hole] = m->slots[j];
			hole = j;
		}
	}
	m->slots[hole] = RDD_NIL;
	m->count--;
}

void rdd_queue_init(struct rdd_queue *q)
{
	*q = (struct rdd_queue){ .head = RDD_NIL, .tail = RDD_NIL };
}

bool rdd_queue_push(struct rdd_queue *q, struct rdd_slab *s, uint32_t slot)
{
	struct rdd_reg *r = &s->regs[slot];
	if (r->state & RDD_REG_QUEUED)
		return false;
	r->state |= RDD_REG_QUEUED;
	r->qnext = RDD_NIL;
	r->qprev = q->tail;
	if (q->tail == RDD_NIL)
		q->head = slot;
	else
		s->regs[q->tail].qnext = slot;
	q->tail = slot;
	q->len++;
	return true;
}

void rdd_queue_remove(struct rdd_queue *q, struct rdd_slab *s, uint32_t slot)
{
	struct rdd_reg *r = &s->regs[slot];
	if (!(r->state & RDD_REG_QUEUED))
		return;
	if (r->qprev == RDD_NIL)
		q->head = r->qnext;
	else
		s->regs[r->qprev].qnext = r->qnext;
	if (r->qnext == RDD_NIL)
		q->tail = r->qprev;
	else
		s->regs[r->qnext].qprev = r->qprev;
	r->qnext = r->qprev = RDD_NIL;
	r->state &= (uint8_t)~RDD_REG_QUEUED;
	q->len--;
}

uint32_t rdd_queue_pop(struct rdd_queue *q, struct rdd_slab *s)
{
	uint32_t slot = q->head;
	if (slot != RDD_NIL)
		rdd_queue_remove(q, s, slot);
	return slot;
}

void rdd_queue_deliver(struct rdd_queue *q, struct rdd_slab *s, uint32_t n)
{
	uint32_t slot = q->head;
	for (uint32_t i = 0; i < n && slot != RDD_NIL; i++) {
		struct rdd_reg *r = &s->regs[slot];
		uint32_t next = r->qnext;
		r->qnext = r->qprev = RDD_NIL;
		r->state &= (uint8_t)~RDD_REG_QUEUED;
		r->pending = 0;
		q->len--;
		slot = next;
	}
	q->head = slot;
	if (slot == RDD_NIL)
		q->tail = RDD_NIL;
	else
		s->regs[slot].qprev = RDD_NIL;
}
