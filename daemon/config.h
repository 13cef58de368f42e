/* The configuration file (readyd.conf(5)): JSON parsed with jansson into a plain struct.
 * Unknown keys, wrong types and out-of-range values are errors that name the key. */
#ifndef READYD_DAEMON_CONFIG_H
#define READYD_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDD_CONFIG_DEFAULT "/etc/readyd/readyd.json"

struct rdd_config {
	char *socket;     /* NULL: not set */
	int log_level;    /* -1: not set */
	uint32_t regs_per_client; /* 0: not set, for each limit */
	uint32_t regs_per_uid;
	uint32_t handshake_ms;
	uint32_t clients_per_uid;
	uint32_t max_fds;
	uint32_t out_max;
	struct rdd_policy *policy; /* NULL: not set */
};

#define RDD_POLICY_MAX_IDS 256

/* Who may connect and who may administer. With both allow lists empty, every local
 * user may connect; admins default to root and the daemon's own uid. */
struct rdd_policy {
	uint32_t allow_uids[RDD_POLICY_MAX_IDS], n_allow_uids;
	uint32_t allow_gids[RDD_POLICY_MAX_IDS], n_allow_gids;
	uint32_t admin_uids[RDD_POLICY_MAX_IDS], n_admin_uids;
	bool admin_set;
};

/* Load path into cfg. A missing file is an error only when 'required'. On failure,
 * returns -errno and writes a one-line reason (with line and column for syntax errors,
 * or the offending key) to err. */
int rdd_config_load(const char *path, bool required, struct rdd_config *cfg, char *err,
		    size_t errlen);
void rdd_config_fini(struct rdd_config *cfg);

#endif
