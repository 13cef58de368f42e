/* Applying the configuration file: at start, and again on SIGHUP, when a file that does
 * not parse leaves the running configuration as it was. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "rdd.h"

void rdd_config_apply(struct rdd *d, struct rdd_config *cfg)
{
	struct rdd_limits *l = &d->lim;
	uint32_t fd_cap = (uint32_t)(d->nofile > RDD_FD_RESERVE + 16 ? d->nofile - RDD_FD_RESERVE : 16);

	rdd_log_set_level(d->cmdline_log_level >= 0 ? d->cmdline_log_level
			  : cfg->log_level >= 0     ? cfg->log_level
						    : RDD_LOG_INFO);
	l->regs_per_client = cfg->regs_per_client ? cfg->regs_per_client : RDD_DEFAULT_REGS_PER_CLIENT;
	l->clients_per_uid = cfg->clients_per_uid ? cfg->clients_per_uid : RDD_DEFAULT_CLIENTS_PER_UID;
	l->out_max = cfg->out_max ? cfg->out_max : RDD_OUT_MAX;
	l->handshake_ms = cfg->handshake_ms ? cfg->handshake_ms : RDD_DEFAULT_HANDSHAKE_MS;
	l->max_fds = fd_cap;
	if (cfg->max_fds > fd_cap)
		log_warning("limits.max_fds %u is above RLIMIT_NOFILE less %u; using %u", cfg->max_fds,
			    RDD_FD_RESERVE, fd_cap);
	else if (cfg->max_fds)
		l->max_fds = cfg->max_fds;
	l->regs_per_uid = cfg->regs_per_uid ? cfg->regs_per_uid : l->max_fds / 2;

	/* Taken over, not copied: a copy could fail for want of memory, and a daemon
	 * without its policy would admit everyone. */
	free(d->policy);
	d->policy = cfg->policy;
	cfg->policy = NULL;
}

static bool in(const uint32_t *ids, uint32_t n, uint32_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

bool rdd_is_admin(const struct rdd *d, uid_t uid)
{
	if (d->policy && d->policy->admin_set)
		return in(d->policy->admin_uids, d->policy->n_admin_uids, uid);
	return uid == 0 || uid == getuid();
}

/* Checked at accept, before any message (and so any fd) is read from the peer. The
 * peer's supplementary groups come from SO_PEERGROUPS. */
bool rdd_may_connect(const struct rdd *d, int fd, uid_t uid, gid_t gid)
{
	const struct rdd_policy *p = d->policy;
	if (!p || (p->n_allow_uids == 0 && p->n_allow_gids == 0))
		return true;
	if (rdd_is_admin(d, uid) || in(p->allow_uids, p->n_allow_uids, uid) ||
	    in(p->allow_gids, p->n_allow_gids, gid))
		return true;
	if (p->n_allow_gids == 0)
		return false;
	/* Most peers have a few groups; the kernel says how much room more need. */
	gid_t small[256], *groups = small;
	socklen_t len = sizeof(small);
	int r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	if (r < 0 && errno == ERANGE && (groups = malloc(len)) != NULL)
		r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
	bool ok = false;
	for (size_t i = 0; r == 0 && !ok && i < len / sizeof(gid_t); i++)
		ok = in(p->allow_gids, p->n_allow_gids, groups[i]);
	if (groups != small)
		free(groups);
	return ok; /* refused when the groups cannot be had: the policy fails closed */
}

int rdd_reload(struct rdd *d, char *err, size_t errlen)
{
	struct rdd_config cfg;
	int r;

	rdd_notify_reloading(d);
	r = rdd_config_load(d->config_path, d->config_required, &cfg, err, errlen);
	if (r < 0) {
		log_err("reload: %s: %s; keeping the running configuration", d->config_path, err);
	} else {
		/* Only a socket we bound from the config can be outdated by it. */
		if (cfg.socket && d->socket_path && !d->socket_cmdline &&
		    strcmp(cfg.socket, d->socket_path) != 0)
			log_warning("reload: a new socket path takes a restart; still serving the old one");
		rdd_config_apply(d, &cfg);
		rdd_config_fini(&cfg);
		/* A new handshake timeout applies to the connections waiting now, too. */
		if (d->hs_timer_fd >= 0)
			rdd_handshake_expire(d);
		log_notice("reloaded %s: %u registrations per client, %u clients per uid, fd limit %u",
			   d->config_path, d->lim.regs_per_client, d->lim.clients_per_uid, d->lim.max_fds);
	}
	rdd_notify_ready(d);
	return r;
}
