/* libFuzzer harness for the configuration parser (daemon/config.c) and its application
 * (daemon/reload.c). The input is the file: written to a memfd, loaded through its
 * /proc/self/fd path both as an optional and as a required file. An accepted config must
 * hold only in-range values and apply cleanly; a refused one must say why. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../../daemon/config.h"
#include "../../daemon/log.h"
#include "../../daemon/rdd.h"
#include "fuzz.h"

static int memfd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *level = getenv("READYD_FUZZ_LOG_LEVEL");
	rdd_log_set_level(level ? rdd_log_parse_level(level) : 0);
	memfd = memfd_create("readyd-fuzz-config", MFD_CLOEXEC);
	if (memfd < 0) {
		perror("memfd_create");
		abort();
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	return 0;
}

static void check_accepted(struct rdd_config *cfg)
{
	bool ok = true;
	if (cfg->socket)
		ok &= strlen(cfg->socket) >= 1 && strlen(cfg->socket) <= 107;
	ok &= cfg->log_level == -1 || (cfg->log_level >= RDD_LOG_ERR && cfg->log_level <= RDD_LOG_DEBUG);
	ok &= cfg->regs_per_client <= 16777216 && cfg->clients_per_uid <= 1048576;
	ok &= cfg->max_fds == 0 || (cfg->max_fds >= 16 && cfg->max_fds <= 1073741816);
	ok &= cfg->out_max == 0 || (cfg->out_max >= 65536 && cfg->out_max <= 1073741824);
	if (cfg->policy) {
		const struct rdd_policy *p = cfg->policy;
		ok &= p->n_allow_uids <= RDD_POLICY_MAX_IDS && p->n_allow_gids <= RDD_POLICY_MAX_IDS &&
		      p->n_admin_uids <= RDD_POLICY_MAX_IDS;
		ok &= p->admin_set || p->n_admin_uids == 0;
	}
	if (!ok) {
		fprintf(stderr, "fuzz-config: an accepted config holds an out-of-range value\n");
		abort();
	}

	/* Apply it as the daemon does at start, to a daemon of its own. */
	struct rdd d = { .cmdline_log_level = rdd_log_get_level(), .nofile = 1024 };
	bool had_policy = cfg->policy != NULL;
	rdd_config_apply(&d, cfg); /* takes the policy */
	if (d.lim.regs_per_client == 0 || d.lim.clients_per_uid == 0 || d.lim.out_max == 0 ||
	    d.lim.max_fds == 0 || d.lim.max_fds > 1024 || had_policy != (d.policy != NULL) ||
	    cfg->policy) {
		fprintf(stderr, "fuzz-config: applying an accepted config left a zero limit\n");
		abort();
	}
	free(d.policy);
}

static void load(bool required)
{
	struct rdd_config cfg;
	char err[512];
	memset(err, 0xa5, sizeof(err));
	int r = rdd_config_load(path, required, &cfg, err, sizeof(err));
	if (r == 0) {
		check_accepted(&cfg);
	} else if (r == -ENOMEM) {
		/* no reason is promised */
	} else if (r != -EINVAL || !memchr(err, '\0', sizeof(err)) || err[0] == '\0') {
		fprintf(stderr, "fuzz-config: refused (%d) without a reason\n", r);
		abort();
	} else if (cfg.socket || cfg.policy) {
		fprintf(stderr, "fuzz-config: a refused config kept allocations\n");
		abort();
	}
	rdd_config_fini(&cfg);
	rdd_config_fini(&cfg); /* idempotent */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ftruncate(memfd, 0) < 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) {
		perror("fuzz-config: memfd");
		abort();
	}
	load(false);
	load(true);
	return 0;
}
