/* Applying the configuration file: at start, and again on SIGHUP, when a file that does
 * not parse leaves the running configuration as it was. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "rdd.h"

void rdd_config_apply(struct rdd *d, const struct rdd_config *cfg)
{
	struct rdd_limits *l = &d->lim;
	uint32_t fd_cap = (uint32_t)(d->nofile > RDD_FD_RESERVE + 16 ? d->nofile - RDD_FD_RESERVE : 16);

	rdd_log_set_level(d->cmdline_log_level >= 0 ? d->cmdline_log_level
			  : cfg->log_level >= 0     ? cfg->log_level
						    : RDD_LOG_INFO);
	l->regs_per_client = cfg->regs_per_client ? cfg->regs_per_client : RDD_DEFAULT_REGS_PER_CLIENT;
	l->clients_per_uid = cfg->clients_per_uid ? cfg->clients_per_uid : RDD_DEFAULT_CLIENTS_PER_UID;
	l->out_max = cfg->out_max ? cfg->out_max : RDD_OUT_MAX;
	l->max_fds = fd_cap;
	if (cfg->max_fds > fd_cap)
		log_warning("limits.max_fds %u is above RLIMIT_NOFILE less %u; using %u", cfg->max_fds,
			    RDD_FD_RESERVE, fd_cap);
	else if (cfg->max_fds)
		l->max_fds = cfg->max_fds;
}

void rdd_reload(struct rdd *d)
{
	struct rdd_config cfg;
	char err[512];

	rdd_notify_reloading(d);
	if (rdd_config_load(d->config_path, d->config_required, &cfg, err, sizeof(err)) < 0) {
		log_err("reload: %s: %s; keeping the running configuration", d->config_path, err);
	} else {
		if (cfg.socket && (!d->socket_path || strcmp(cfg.socket, d->socket_path) != 0))
			log_warning("reload: a new socket path takes a restart; still serving the old one");
		rdd_config_apply(d, &cfg);
		rdd_config_fini(&cfg);
		log_notice("reloaded %s: %u registrations per client, %u clients per uid, fd limit %u",
			   d->config_path, d->lim.regs_per_client, d->lim.clients_per_uid, d->lim.max_fds);
	}
	rdd_notify_ready(d);
}
