/* Registrations: the slab that holds them, the per-client token map, and the per-client
 * ready queue. Plain data structures over slot indexes; no syscalls, so they are unit-
 * tested on their own. A slot index plus its generation names a registration; the pair
 * travels in epoll_data so an event for a freed slot is recognised and dropped. */
#ifndef READYD_DAEMON_REGISTRY_H
#define READYD_DAEMON_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDD_NIL UINT32_MAX
#define RDD_GEN_MASK 0xffffffu /* generations are compared in 24 bits (see epoll_data) */

enum {
	RDD_REG_QUEUED = 0x1, /* in its client's ready queue */
	RDD_REG_LIVE = 0x2,   /* slot in use */
	RDD_REG_DISARMED = 0x4, /* oneshot, reported, not re-armed yet */
	RDD_REG_GROUPED = 0x8,  /* a dispatch group member: the group's watch stands for it */
};

/* 40 bytes: the whole per-registration cost in the daemon, beside the token map's slot. */
struct rdd_reg {
	uint64_t token;
	int32_t fd;       /* the daemon's own copy; -1 in a free slot */
	uint32_t gen;     /* bumped when the slot is freed */
	uint32_t owner;   /* client slot */
	uint32_t tick;    /* bumped on every readiness the kernel reports */
	uint32_t qnext;   /* ready queue links; qnext also chains the free list */
	uint32_t qprev;
	uint8_t interest; /* RDP_INTEREST_* */
	uint8_t flags;    /* RDP_FLAG_* */
	uint8_t pending;  /* RDP_READY_* waiting for delivery */
	uint8_t state;    /* RDD_REG_* */
};
_Static_assert(sizeof(struct rdd_reg) == 40, "registration size");

struct rdd_slab {
	struct rdd_reg *regs;
	uint32_t cap;       /* slots allocated */
	uint32_t hwm;       /* slots ever handed out: those below are initialised */
	uint32_t used;      /* live registrations */
	uint32_t free_head; /* freed slots, chained through qnext */
};

int rdd_slab_init(struct rdd_slab *s);
void rdd_slab_fini(struct rdd_slab *s);
/* Take a free slot; its fields other than gen are zeroed and fd is -1. */
int rdd_slab_alloc(struct rdd_slab *s, uint32_t *slot);
void rdd_slab_free(struct rdd_slab *s, uint32_t slot);
/* The live registration at slot with generation gen (24 bits), or NULL. */
struct rdd_reg *rdd_slab_lookup(struct rdd_slab *s, uint32_t slot, uint32_t gen);

static inline struct rdd_reg *rdd_slab_at(struct rdd_slab *s, uint32_t slot)
{
	return &s->regs[slot];
}

/* token -> slot, open addressing over slot indexes, linear probing, backward-shift delete. */
struct rdd_tokmap {
	uint32_t *slots;
	uint32_t mask; /* capacity - 1; capacity is a power of two, 0 when empty */
	uint32_t count;
};

void rdd_tokmap_init(struct rdd_tokmap *m);
void rdd_tokmap_fini(struct rdd_tokmap *m);
uint32_t rdd_tokmap_find(const struct rdd_tokmap *m, const struct rdd_slab *s, uint64_t token);
/* Insert slot (whose token must not be present yet). Returns 0 or -ENOMEM. */
int rdd_tokmap_insert(struct rdd_tokmap *m, const struct rdd_slab *s, uint32_t slot);
void rdd_tokmap_remove(struct rdd_tokmap *m, const struct rdd_slab *s, uint32_t slot);

/* A client's ready queue: registrations with pending readiness, each at most once, in the
 * order they became ready. */
struct rdd_queue {
	uint32_t head;
	uint32_t tail;
	uint32_t len;
};

void rdd_queue_init(struct rdd_queue *q);
/* Append slot unless it is already queued. Returns true if it was appended. */
bool rdd_queue_push(struct rdd_queue *q, struct rdd_slab *s, uint32_t slot);
/* Unlink slot if queued. */
void rdd_queue_remove(struct rdd_queue *q, struct rdd_slab *s, uint32_t slot);
/* Unlink and return the head, or RDD_NIL. */
uint32_t rdd_queue_pop(struct rdd_queue *q, struct rdd_slab *s);
/* The first n were delivered: unlink them and clear their pending readiness, in one
 * walk. */
void rdd_queue_deliver(struct rdd_queue *q, struct rdd_slab *s, uint32_t n);

#endif
