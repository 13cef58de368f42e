/* The daemon's state: one event loop, its listeners, its clients and the registration
 * slab. Shared by the daemon's modules; nothing here leaves the daemon. */
#ifndef READYD_DAEMON_RDD_H
#define READYD_DAEMON_RDD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "fault.h"
#include "registry.h"

#define RDD_VERSION "1.0.0"
#define RDD_UPGRADE_STATE_FORMAT 1 /* the live-upgrade state this binary reads and writes */

/* What an epoll_data names: tag (8 bits) | generation (24 bits) | slot (32 bits). The tag
 * comes first so the loop dispatches before touching any object (sd-event's WakeupType). */
enum rdd_tag {
	RDD_TAG_REG = 0,
	RDD_TAG_CLIENT = 1,
	RDD_TAG_LISTEN = 2,
	RDD_TAG_SIGNAL = 3,
	RDD_TAG_TIMER = 4,
	RDD_TAG_GROUP = 5,
	RDD_TAG_HANDSHAKE = 6,
};

#define RDD_LISTEN_MAX 16 /* listening sockets, bound or passed by systemd */

static inline uint64_t rdd_data(enum rdd_tag tag, uint32_t gen, uint32_t slot)
{
	return (uint64_t)tag << 56 | (uint64_t)(gen & RDD_GEN_MASK) << 32 | slot;
}

/* Limits, with their documented defaults (readyd(8)). */
struct rdd_limits {
	uint32_t regs_per_client;   /* default 65536 */
	uint32_t regs_per_uid;      /* default: half the fd limit, so one uid leaves room */
	uint32_t handshake_ms;      /* HELLO must come this soon after connect: 10 s */
	uint32_t clients_per_uid;   /* default 1024 */
	uint32_t max_fds;           /* default: RLIMIT_NOFILE after raising it, less 320 */
	uint32_t out_max;           /* queued output per client before reads stop: 256 KiB */
	uint32_t req_budget;        /* requests read per client per wakeup: 64 */
	uint32_t event_budget;      /* EVENTS packets per client per wakeup: 4 */
};

#define RDD_DEFAULT_REGS_PER_CLIENT 65536u
#define RDD_DEFAULT_CLIENTS_PER_UID 1024u
/* fds kept free under RLIMIT_NOFILE: room to receive one full ADD (253 fds) beyond the
 * limit, whose extra fds are then closed, plus the loop's own. */
#define RDD_FD_RESERVE 320u
#define RDD_OUT_MAX (256u * 1024u)
#define RDD_DEFAULT_HANDSHAKE_MS 10000u

struct rdd_client {
	int fd;
	uint64_t id;      /* connection number, unique for the daemon's life */
	char comm[16];    /* the connecting process's name, from /proc, or "?" */
	uint32_t slot;
	uint32_t gen;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool hello_done;
	bool want_out;    /* EPOLLOUT is in its epoll interest: output is blocked */
	bool out_ready;   /* EPOLLOUT arrived since the last service */
	bool in_pending;  /* input may be waiting (edge-triggered: read until EAGAIN) */
	bool on_dirty;    /* on the loop's list of clients with work */
	bool stored;      /* kept in systemd's fd store as rdc-<id> */
	bool resyncing;   /* sent RESYNC: requests are discarded until RESYNC_ACK */
	bool kicked;      /* disconnected by an admin: closes once its ERROR is sent */
	uint32_t features; /* granted in WELCOME */
	struct rdd_tokmap map;
	struct rdd_queue ready;
	uint32_t nregs;
	/* Framed messages not yet sent, in order (replies, control answers, errors). */
	uint8_t *out;
	size_t out_off, out_len, out_cap;
	uint64_t events_delivered;
	uint64_t connected_usec; /* CLOCK_REALTIME */
	uint64_t accepted_mono;  /* CLOCK_MONOTONIC, for the handshake timeout */
};

/* Clients to service after this epoll batch, named by rdd_data(CLIENT, gen, slot) so a
 * client freed meanwhile is skipped instead of touched. */
struct rdd_worklist {
	uint64_t *v;
	uint32_t n;
	uint32_t cap;
};

struct rdd_uid_count {
	uid_t uid;
	uint32_t n;    /* connections */
	uint32_t regs; /* registrations, all its connections together */
};

struct rdd {
	int epfd;
	int sigfd;
	int listen_fds[RDD_LISTEN_MAX];
	struct sockaddr_un listen_addr[RDD_LISTEN_MAX];
	socklen_t listen_addr_len[RDD_LISTEN_MAX];
	unsigned nlisten;
	int timer_fd;         /* sd_notify STATUS= and WATCHDOG=1, only under systemd */
	int hs_timer_fd;      /* handshake deadlines; one-shot, made at start */
	bool hs_armed;
	uint64_t watchdog_usec;
	uint64_t last_status_usec;
	uint64_t last_status_events;
	int reserve_fd;       /* spare fd released to accept-and-close on EMFILE */
	char *socket_path;    /* the path we bound and will unlink, or NULL */
	uint64_t bound_dev;   /* ... if it is still the socket we bound */
	uint64_t bound_ino;
	char **argv;          /* as started: an upgrade executes the same command line */
	char exe_path[4096];  /* our binary, resolved at start: the default upgrade target */
	struct rdd_limits lim;
	struct rdd_slab slab;
	struct rdd_client **clients; /* indexed by client slot; NULL when free */
	uint32_t *client_gen;
	uint32_t nclients_cap;
	uint32_t nclients;
	struct rdd_uid_count *uids;
	uint32_t nuids;
	uint32_t nfds;        /* fds the daemon holds: registrations + clients + its own */
	struct rdd_worklist dirty; /* clients with work left, as (gen, slot) names */
	struct rdd_worklist spare;
	bool dirty_overflow;  /* a client could not be listed (no memory): look at them all */
	bool stopping;
	bool accept_paused;   /* listener removed from epoll after EMFILE; retried later */
	struct rdd_policy *policy; /* NULL: everyone may connect; root and us administer */
	const char *config_path;  /* read again on SIGHUP */
	bool config_required;     /* given with --config: a missing file is an error */
	bool socket_cmdline;      /* --socket given: a config's socket never applies */
	int cmdline_log_level;    /* --log-level, which a config never overrides; or -1 */
	uint64_t nofile;          /* RLIMIT_NOFILE after raising it */
	uint64_t start_usec;  /* CLOCK_MONOTONIC */
	uint64_t events_delivered;
	uint64_t accepted;
	uint64_t upgrades;        /* live upgrades since the start */
	uint64_t next_client_id;
	struct rdd_group **groups;   /* group.c; indexed by group slot */
	uint32_t *group_gen;
	uint32_t ngroups_cap;
	uint32_t *gmap_keys, *gmap_vals; /* member registration slot -> group slot */
	uint32_t gmap_cap, gmap_n;
};

/* client.c */
int rdd_client_new(struct rdd *d, int fd);
void rdd_client_close(struct rdd *d, struct rdd_client *c, const char *why);
/* Disconnect c with an ERROR it will read (see client.c). */
void rdd_client_kick(struct rdd *d, struct rdd_client *c, uint32_t err, uint32_t reason);
struct ucred;
/* Make fd a client (slot, epoll, uid count); fd stays the caller's on failure. */
int rdd_client_attach(struct rdd *d, int fd, const struct ucred *cred, struct rdd_client **out);
/* Re-create a registration kept across an upgrade; takes fd, closing it on failure. */
int rdd_reg_restore(struct rdd *d, struct rdd_client *c, const struct rdd_reg *saved, int fd,
		    const char *group, bool holds);
/* Queue bytes (whole framed messages) kept across an upgrade for c. */
int rdd_client_restore_out(struct rdd_client *c, const void *bytes, size_t len);
/* The epoll events a registration is watched with (none while a oneshot is disarmed). */
uint32_t rdd_reg_epoll_events(const struct rdd_reg *r);
void rdd_client_service(struct rdd *d, struct rdd_client *c);
void rdd_client_mark(struct rdd *d, struct rdd_client *c);
void rdd_client_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events);
void rdd_reg_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events);
/* The handshake timer, made at start, disarmed. */
int rdd_handshake_init(struct rdd *d);
/* Start c's handshake deadline (at accept, or after an upgrade for one owing HELLO). */
void rdd_handshake_start(struct rdd *d, struct rdd_client *c);
/* The handshake timer fired: close connections that never said HELLO in time. */
void rdd_handshake_expire(struct rdd *d);
/* Queue a framed message for c, sending it at once when nothing is queued before it. */
int rdd_client_send(struct rdd *d, struct rdd_client *c, const void *msg, size_t len);
/* A descriptor held for a uid beyond its registrations (a group's own copy) counts
 * against limits.registrations_per_uid like one. at_quota: whether the uid may hold no
 * more (never for the policy's admins). charge counts one more, and says whether it
 * did (a uid with no connection has no count); give_back undoes a charge. */
bool rdd_uid_at_quota(struct rdd *d, uid_t uid);
bool rdd_uid_charge(struct rdd *d, uid_t uid);
void rdd_uid_give_back(struct rdd *d, uid_t uid);

/* group.c: dispatch groups (see there). join returns 0 or a positive errno; 'restoring'
 * (a live upgrade putting a member back) skips the per-uid quota, which the group met
 * when it was made. */
uint32_t rdd_group_join(struct rdd *d, struct rdd_client *c, uint32_t reg, const char *name,
			bool restoring);
/* Group names are 1 to 32 bytes of printable ASCII without space (0x21 to 0x7e). */
bool rdd_group_name_ok(const char *name);
void rdd_group_leave(struct rdd *d, uint32_t reg);
void rdd_group_rearm(struct rdd *d, uint32_t reg);
void rdd_group_event(struct rdd *d, uint32_t slot, uint32_t gen, uint32_t events);
const char *rdd_group_name(struct rdd *d, uint32_t reg);
/* Does reg hold its group's last wakeup (woken, not re-armed)? And restore that. */
bool rdd_group_holds(struct rdd *d, uint32_t reg);
void rdd_group_set_holder(struct rdd *d, uint32_t reg);
void rdd_groups_fini(struct rdd *d);
/* Give a registration readiness from these epoll events (client.c). */
void rdd_reg_deliver(struct rdd *d, uint32_t slot, uint32_t events);

/* control.c: answer a CONTROL request body; returns a malloc'd JSON string. */
char *rdd_control(struct rdd *d, struct rdd_client *c, uint32_t id, const char *req, size_t len);

/* server.c */
int rdd_listen(struct rdd *d, const char *path);
/* Take the sockets systemd passed (LISTEN_FDS). Returns how many, or -errno. */
int rdd_listen_activated(struct rdd *d);
void rdd_listen_resume(struct rdd *d);
/* Is fd a client's end of a connection to one of our listeners? Registering it would
 * keep that connection open forever (the daemon would hold its peer). */
bool rdd_is_own_connection(const struct rdd *d, int fd);
/* Serve an already listening socket (passed by systemd, or kept across an upgrade). */
int rdd_listen_adopt(struct rdd *d, int fd);
/* Block SIGTERM, SIGINT, SIGHUP and SIGUSR2 and take them through a signalfd in the loop. */
int rdd_signals_init(struct rdd *d);
int rdd_run(struct rdd *d);
/* One turn of the loop, the body of rdd_run: wait up to 'timeout' ms, dispatch, harvest
 * more while batches come back full, then service the clients with work. Returns the
 * number of events, or -errno. */
int rdd_loop_once(struct rdd *d, int timeout);
uint64_t rdd_now_usec(int clock);

/* upgrade.c: live upgrade. Serialise the state into a memfd, keep every fd across
 * execve of ourselves or 'binary'; the new process restores it. On failure returns
 * -errno with the reason in err, and the running daemon carries on. */
int rdd_upgrade(struct rdd *d, const char *binary, struct rdd_client *requester, uint32_t req_id,
		char *err, size_t errlen);
/* In the new process: the state fd from READYD_UPGRADE_FD, or -1 when not upgrading. */
int rdd_upgrade_fd(void);
int rdd_upgrade_restore(struct rdd *d, int fd);

/* reload.c: the configuration file, applied at start and again on SIGHUP. */
struct rdd_config;
/* Takes cfg->policy (leaving NULL there): applying cannot fail half-way. */
void rdd_config_apply(struct rdd *d, struct rdd_config *cfg);
/* Read the config file again; on error keep the running one and say why in err. */
int rdd_reload(struct rdd *d, char *err, size_t errlen);

/* notify.c: sd_notify(3) to the service manager; everything is a no-op without
 * NOTIFY_SOCKET. */
int rdd_notify_init(struct rdd *d);
void rdd_notify_ready(struct rdd *d);
void rdd_notify_reloading(struct rdd *d);
void rdd_notify_tick(struct rdd *d);
void rdd_notify_stopping(struct rdd *d);
/* Keep a client connection in systemd's fd store (FDSTORE=1, FDNAME=rdc-<id>), or take
 * it out when the client leaves. */
void rdd_notify_fdstore(struct rdd *d, struct rdd_client *c);
void rdd_notify_fdstore_remove(struct rdd *d, struct rdd_client *c);
/* A connection systemd kept for us across a crash: adopt it and tell it to resync. */
int rdd_client_adopt_stored(struct rdd *d, int fd, uint64_t id);

/* policy (reload.c): may this peer connect, may it administer? */
bool rdd_may_connect(const struct rdd *d, int fd, uid_t uid, gid_t gid);
bool rdd_is_admin(const struct rdd *d, uid_t uid);

/* Scratch buffers shared by the single-threaded loop. */
extern uint8_t rdd_rxbuf[];
extern uint8_t rdd_txbuf[];

#endif
