/* Group dispatch: registrations of one file, by any number of clients of one uid, joined
 * under a name. The group watches the file once, with its own copy of the fd and
 * EPOLLONESHOT, so a readiness wakes the daemon once; the daemon gives it to exactly one
 * armed member, round-robin, and re-arms the group's watch only when that member re-arms
 * (or leaves). Every readiness, an incoming connection on a listening socket say, so
 * wakes exactly one worker; EPOLLEXCLUSIVE promises only "one or more". Members are
 * oneshot registrations; their own fds are not in epoll while they are members. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <linux/kcmp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "log.h"
#include "rdd.h"

struct rdd_group {
	char name[RDP_GROUP_NAME_SIZE + 1];
	uid_t uid;
	int fd;            /* the group's own copy, the one epoll watches */
	uint32_t slot;
	uint32_t gen;
	uint8_t interest;
	uint64_t dev, ino; /* the file every member must be a registration of */
	uint32_t *members; /* registration slots */
	uint32_t n, cap;
	uint32_t cursor;   /* round-robin: where the next search starts */
	uint32_t holder;   /* the member woken last, until it re-arms; RDD_NIL when none */
	bool charged;      /* its fd counts in its uid's registrations (rdd_uid_charge) */
};

/* member slot -> group slot, for the few registrations that are members */
static int member_find(const struct rdd *d, uint32_t reg)
{
	for (uint32_t i = 0; d->gmap_cap && i <= d->gmap_cap - 1; i++) {
		uint32_t k = (reg * 2654435761u + i) & (d->gmap_cap - 1);
		if (d->gmap_keys[k] == RDD_NIL)
			return -1;
		if (d->gmap_keys[k] == reg)
			return (int)k;
	}
	return -1;
}

static int member_map(struct rdd *d, uint32_t reg, uint32_t group)
{
	if ((d->gmap_n + 1) * 2 > d->gmap_cap) {
		uint32_t ncap = d->gmap_cap ? d->gmap_cap * 2 : 64, ocap = d->gmap_cap;
		uint32_t *nk = malloc(ncap * sizeof(*nk)), *nv = malloc(ncap * sizeof(*nv));
		uint32_t *ok = d->gmap_keys, *ov = d->gmap_vals;
		if (!nk || !nv) {
			free(nk);
			free(nv);
			return -ENOMEM;
		}
		memset(nk, 0xff, ncap * sizeof(*nk));
		d->gmap_keys = nk;
		d->gmap_vals = nv;
		d->gmap_cap = ncap;
		d->gmap_n = 0;
		for (uint32_t i = 0; i < ocap; i++)
			if (ok[i] != RDD_NIL)
				(void)member_map(d, ok[i], ov[i]);
		free(ok);
		free(ov);
	}
	uint32_t k = reg * 2654435761u & (d->gmap_cap - 1);
	while (d->gmap_keys[k] != RDD_NIL)
		k = (k + 1) & (d->gmap_cap - 1);
	d->gmap_keys[k] = reg;
	d->gmap_vals[k] = group;
	d->gmap_n++;
	return 0;
}

static void member_unmap(struct rdd *d, uint32_t reg)
{
	int at = member_find(d, reg);
	if (at < 0)
		return;
	/* Backward-shift deletion, as in the token map. */
	uint32_t mask = d->gmap_cap - 1, hole = (uint32_t)at;
	for (uint32_t j = (hole + 1) & mask; d->gmap_keys[j] != RDD_NIL; j = (j + 1) & mask) {
		uint32_t home = d->gmap_keys[j] * 2654435761u & mask;
		if (((j - home) & mask) >= ((j - hole) & mask)) {
			d->gmap_keys[hole] = d->gmap_keys[j];
			d->gmap_vals[hole] = d->gmap_vals[j];
			hole = j;
		}
	}
	d->gmap_keys[hole] = RDD_NIL;
	d->gmap_n--;
}

static struct rdd_group *group_of(struct rdd *d, uint32_t reg)
{
	int at = member_find(d, reg);
	return at < 0 ? NULL : d->groups[d->gmap_vals[at]];
}

/* Arm the group's watch when a member is armed and none holds the last wakeup. */
static void group_arm(struct rdd *d, struct rdd_group *g)
{
	bool any = false;
	if (g->holder == RDD_NIL)
		for (uint32_t i = 0; i < g->n && !any; i++)
			any = !(rdd_slab_at(&d->slab, g->members[i])->state & RDD_REG_DISARMED);
	struct rdd_reg model = { .interest = g->interest, .flags = RDP_FLAG_ONESHOT,
				 .state = any ? 0 : RDD_REG_DISARMED };
	struct epoll_event ev = { .events = rdd_reg_epoll_events(&model),
				  .data.u64 = rdd_data(RDD_TAG_GROUP, g->gen, g->slot) };
	if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, g->fd, &ev) < 0)
		log_err("group %s: re-arming its watch: %s", g->name, strerror(errno));
}

static void group_free(struct rdd *d, struct rdd_group *g)
{
	epoll_ctl(d->epfd, EPOLL_CTL_DEL, g->fd, NULL);
	close(g->fd);
	d->nfds--;
	if (g->charged)
		rdd_uid_give_back(d, g->uid);
	d->groups[g->slot] = NULL;
	d->group_gen[g->slot] = (d->group_gen[g->slot] + 1) & RDD_GEN_MASK;
	free(g->members);
	free(g);
}

static struct rdd_group *group_new(struct rdd *d, uid_t uid, const char *name,
				   const struct rdd_reg *first, uint64_t dev, uint64_t ino,
				   bool restoring, int *err)
{
	uint32_t slot = 0;
	while (slot < d->ngroups_cap && d->groups[slot])
		slot++;
	if (slot == d->ngroups_cap) {
		uint32_t ncap = d->ngroups_cap ? d->ngroups_cap * 2 : 8;
		struct rdd_group **ng = realloc(d->groups, ncap * sizeof(*ng));
		if (!ng)
			goto nomem;
		d->groups = ng;
		uint32_t *gg = realloc(d->group_gen, ncap * sizeof(*gg));
		if (!gg)
			goto nomem;
		d->group_gen = gg;
		for (uint32_t i = d->ngroups_cap; i < ncap; i++) {
			ng[i] = NULL;
			gg[i] = 0;
		}
		d->ngroups_cap = ncap;
	}
	if (d->nfds >= d->lim.max_fds) {
		*err = EMFILE;
		return NULL;
	}
	/* The group's copy of the fd is one more descriptor held for this uid: without
	 * counting it, a uid at its registration limit could double what it holds by
	 * joining each registration to a group of its own. Counted once the group is made. */
	if (!restoring && rdd_uid_at_quota(d, uid)) {
		*err = EDQUOT;
		return NULL;
	}
	struct rdd_group *g = calloc(1, sizeof(*g));
	if (!g)
		goto nomem;
	g->fd = fcntl(first->fd, F_DUPFD_CLOEXEC, 3);
	if (g->fd < 0) {
		*err = errno;
		free(g);
		return NULL;
	}
	snprintf(g->name, sizeof(g->name), "%s", name);
	g->uid = uid;
	g->slot = slot;
	g->gen = d->group_gen[slot];
	g->interest = first->interest;
	g->dev = dev;
	g->ino = ino;
	g->holder = RDD_NIL;
	struct epoll_event ev = { .events = EPOLLONESHOT,
				  .data.u64 = rdd_data(RDD_TAG_GROUP, g->gen, slot) };
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, g->fd, &ev) < 0) {
		*err = errno;
		close(g->fd);
		free(g);
		return NULL;
	}
	d->groups[slot] = g;
	d->nfds++;
	g->charged = rdd_uid_charge(d, uid);
	return g;
nomem:
	*err = ENOMEM;
	return NULL;
}

/* Is fd the group's open file? kcmp(KCMP_FILE) says so exactly. Without it, inode
 * numbers do, except for anonymous inodes (every eventfd, timerfd, signalfd and epoll
 * shares one), which are then refused rather than mixed up. */
static bool same_file(const struct rdd_group *g, int fd, const struct stat *st)
{
	pid_t self = getpid();
	long k = syscall(SYS_kcmp, self, self, KCMP_FILE, g->fd, fd);
	if (k >= 0)
		return k == 0;
	if (g->dev != (uint64_t)st->st_dev || g->ino != (uint64_t)st->st_ino)
		return false;
	char path[64], link[32];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	return n > 0 && strncmp(link, "anon_inode:", (size_t)n < 11 ? (size_t)n : 11) != 0;
}

/* Group names are printable ASCII, so they travel through JSON (control plane, upgrade
 * state) unharmed. */
bool rdd_group_name_ok(const char *name)
{
	for (const char *p = name; *p; p++)
		if (*p < 0x21 || *p > 0x7e)
			return false;
	return name[0] != '\0';
}

uint32_t rdd_group_join(struct rdd *d, struct rdd_client *c, uint32_t reg, const char *name,
			bool restoring)
{
	struct rdd_reg *r = rdd_slab_at(&d->slab, reg);
	struct stat st;
	int err = 0;

	if (!rdd_group_name_ok(name) || strlen(name) > RDP_GROUP_NAME_SIZE)
		return EINVAL;
	if (!(r->flags & RDP_FLAG_ONESHOT))
		return EINVAL; /* members are oneshot: a wakeup is theirs until they re-arm */
	if (group_of(d, reg))
		return EBUSY;
	if (fstat(r->fd, &st) < 0)
		return (uint32_t)errno;

	struct rdd_group *g = NULL;
	for (uint32_t i = 0; i < d->ngroups_cap && !g; i++)
		if (d->groups[i] && d->groups[i]->uid == c->uid && strcmp(d->groups[i]->name, name) == 0)
			g = d->groups[i];
	if (g && !same_file(g, r->fd, &st))
		return EXDEV; /* a group is one open file */
	if (g && g->interest != r->interest)
		return EINVAL;
	bool created = !g;
	if (!g) {
		g = group_new(d, c->uid, name, r, (uint64_t)st.st_dev, (uint64_t)st.st_ino,
			      restoring, &err);
		if (!g)
			return (uint32_t)err;
	}
	if (g->n == g->cap) {
		uint32_t ncap = g->cap ? g->cap * 2 : 8;
		uint32_t *nm = realloc(g->members, ncap * sizeof(*nm));
		if (!nm)
			goto nomem;
		g->members = nm;
		g->cap = ncap;
	}
	if (member_map(d, reg, g->slot) < 0)
		goto nomem;
	g->members[g->n++] = reg;
	/* From now on the group watches for it: the member's own watch goes. */
	if (epoll_ctl(d->epfd, EPOLL_CTL_DEL, r->fd, NULL) < 0)
		log_debug("group %s: EPOLL_CTL_DEL member: %s", name, strerror(errno));
	r->state |= RDD_REG_GROUPED;
	/* A member that joins already woken (its oneshot fired before) holds that
	 * readiness: nobody else is woken for it until it re-arms. Not when an upgrade
	 * puts members back: who held the wakeup was saved, and is restored as it was. */
	if (!restoring && (r->state & RDD_REG_DISARMED) && g->holder == RDD_NIL)
		g->holder = reg;
	group_arm(d, g);
	return 0;
nomem:
	if (created)
		group_free(d, g);
	return ENOMEM;
}

void rdd_group_leave(struct rdd *d, uint32_t reg)
{
	struct rdd_group *g = group_of(d, reg);
	if (!g)
		return;
	member_unmap(d, reg);
	for (uint32_t i = 0; i < g->n; i++)
		if (g->members[i] == reg) {
			g->members[i] = g->members[--g->n];
			break;
		}
	rdd_slab_at(&d->slab, reg)->state &= (uint8_t)~RDD_REG_GROUPED;
	if (g->n == 0) {
		group_free(d, g);
		return;
	}
	/* A member that leaves holding a wakeup passes it on: nothing is lost. */
	if (g->holder == reg)
		g->holder = RDD_NIL;
	if (g->cursor >= g->n)
		g->cursor = 0;
	group_arm(d, g);
}

void rdd_group_rearm(struct rdd *d, uint32_t reg)
{
	struct rdd_group *g = group_of(d, reg);
	if (!g)
		return;
	if (g->holder == reg)
		g->holder = RDD_NIL;
	group_arm(d, g);
}

void rdd_group_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events)
{
	if (slot >= d->ngroups_cap || !d->groups[slot] || d->group_gen[slot] != (gen & RDD_GEN_MASK))
		return;
	struct rdd_group *g = d->groups[slot];
	for (uint32_t k = 0; k < g->n; k++) {
		uint32_t i = (g->cursor + k) % g->n;
		struct rdd_reg *r = rdd_slab_at(&d->slab, g->members[i]);
		if (r->state & RDD_REG_DISARMED)
			continue;
		g->cursor = (i + 1) % g->n;
		g->holder = g->members[i];
		rdd_reg_deliver(d, g->members[i], events);
		return;
	}
	/* No member armed (it raced a re-arm): the watch stays disarmed until one is. */
}

bool rdd_group_holds(struct rdd *d, uint32_t reg)
{
	struct rdd_group *g = group_of(d, reg);
	return g && g->holder == reg;
}

void rdd_group_set_holder(struct rdd *d, uint32_t reg)
{
	struct rdd_group *g = group_of(d, reg);
	if (!g)
		return;
	g->holder = reg;
	group_arm(d, g);
}

const char *rdd_group_name(struct rdd *d, uint32_t reg)
{
	struct rdd_group *g = group_of(d, reg);
	return g ? g->name : NULL;
}

void rdd_groups_fini(struct rdd *d)
{
	for (uint32_t i = 0; i < d->ngroups_cap; i++)
		if (d->groups[i])
			group_free(d, d->groups[i]);
	free(d->groups);
	free(d->group_gen);
	free(d->gmap_keys);
	free(d->gmap_vals);
}
