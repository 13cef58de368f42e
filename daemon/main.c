/* readyd: command line, configuration, limits, then the event loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "../proto/rdp_path.h"
#include "config.h"
#include "log.h"
#include "rdd.h"

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: readyd [OPTION]...\n"
		"I/O readiness as a service: serve epoll registrations handed over a Unix socket.\n"
		"\n"
		"  -s, --socket PATH      listen on PATH (default: $READYD_SOCKET, else\n"
		"                         $RUNTIME_DIRECTORY/readyd.sock, else\n"
		"                         $XDG_RUNTIME_DIR/readyd.sock, else %s)\n"
		"  -c, --config FILE      read FILE (default %s, if it exists)\n"
		"  -l, --log-level LEVEL  err, warning, notice, info (default) or debug\n"
		"  -h, --help             show this help and exit\n"
		"  -V, --version          show the version and exit\n"
		"\n"
		"See readyd(8), readyd.conf(5) and readyd-protocol(7).\n",
		RDP_SOCKET_FALLBACK, RDD_CONFIG_DEFAULT);
}

/* Raise the soft fd limit to the hard one; the daemon holds one fd per registration. */
static rlim_t raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warning("raising RLIMIT_NOFILE to %llu: %s", (unsigned long long)rl.rlim_max,
				    strerror(errno));
			rl.rlim_cur = old;
		}
	}
	return rl.rlim_cur;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	const char *socket_path = NULL, *config_path = NULL;
	int level = -1, o;

	rdd_log_init();
#ifdef RDD_FAULT_INJECTION
	rdd_fault_init();
	log_warning("built with allocation-failure injection: for tests only");
#endif
	while ((o = getopt_long(argc, argv, "s:c:l:hV", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			socket_path = optarg;
			break;
		case 'c':
			config_path = optarg;
			break;
		case 'l':
			level = rdd_log_parse_level(optarg);
			if (level < 0) {
				fprintf(stderr, "readyd: invalid log level '%s' (err, warning, notice, "
						"info, debug)\n", optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			/* "upgrade-state N" tells a running daemon this binary can take over. */
			printf("readyd %s (protocol %u, upgrade-state %d)\n", RDD_VERSION, RDP_VERSION,
			       RDD_UPGRADE_STATE_FORMAT);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "readyd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	struct rdd_config cfg;
	char err[512];
	const char *cpath = config_path ? config_path : RDD_CONFIG_DEFAULT;
	if (rdd_config_load(cpath, config_path != NULL, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "readyd: %s: %s\n", cpath, err);
		/* Mid-upgrade every client depends on us starting: defaults, then. */
		if (!getenv("READYD_UPGRADE_FD"))
			return 1;
		fprintf(stderr, "readyd: upgrading: carrying on with the built-in defaults\n");
		cfg = (struct rdd_config){ .log_level = -1 };
	}

	struct rdd d = {
		.epfd = -1,
		.sigfd = -1,
		.timer_fd = -1,
		.hs_timer_fd = -1,
		.reserve_fd = -1,
		.lim = { .req_budget = 64, .event_budget = 4 },
		.nfds = 3, /* stdin, stdout, stderr */
		.config_path = cpath,
		.config_required = config_path != NULL,
		.cmdline_log_level = level,
		.socket_cmdline = socket_path != NULL,
		.start_usec = rdd_now_usec(CLOCK_MONOTONIC),
		.argv = argv,
	};
	ssize_t el = readlink("/proc/self/exe", d.exe_path, sizeof(d.exe_path) - 1);
	d.exe_path[el > 0 ? el : 0] = '\0';
	/* The log level first, so that raising the fd limit logs at the right level. */
	rdd_log_set_level(level >= 0 ? level : cfg.log_level >= 0 ? cfg.log_level : RDD_LOG_INFO);
	d.nofile = raise_nofile();
	rdd_config_apply(&d, &cfg);
	rdd_slab_init(&d.slab);

	int rc = 1;
	d.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d.epfd < 0) {
		log_err("epoll_create1: %s", strerror(errno));
		goto finish;
	}
	d.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	d.nfds += 2;
	int r;
	r = rdd_handshake_init(&d);
	if (r < 0) {
		log_err("handshake timer: %s", strerror(-r));
		goto finish;
	}
	/* Signals before the socket: a SIGTERM during startup is a clean stop. */
	r = rdd_signals_init(&d);
	if (r < 0) {
		log_err("signals: %s", strerror(-r));
		goto finish;
	}
	/* An upgrade hands over everything; else sockets passed by systemd take precedence
	 * over binding our own. */
	int state_fd = rdd_upgrade_fd();
	if (state_fd >= 0)
		r = rdd_upgrade_restore(&d, state_fd) == 0 ? 1 : 0;
	else
		r = rdd_listen_activated(&d);
	if (r < 0)
		goto finish;
	if (r == 0) {
		/* Resolved only when we bind ourselves: under activation it is unused. */
		char defpath[108];
		if (!socket_path)
			socket_path = cfg.socket;
		if (!socket_path) {
			if (rdp_default_socket_path(defpath, sizeof(defpath)) < 0) {
				log_err("the default socket path is too long (at most 107 bytes)");
				goto finish;
			}
			socket_path = defpath;
		}
		if (rdd_listen(&d, socket_path) < 0)
			goto finish;
	}
	r = rdd_notify_init(&d);
	if (r < 0)
		log_warning("sd_notify timer: %s", strerror(-r));
	log_info("readyd %s ready: fd limit %u, %u registrations per client, %u clients per uid",
		 RDD_VERSION, d.lim.max_fds, d.lim.regs_per_client, d.lim.clients_per_uid);
	rc = rdd_run(&d) < 0 ? 1 : 0;
	log_info("stopped");

finish:
	if (d.sigfd >= 0)
		close(d.sigfd);
	if (d.timer_fd >= 0)
		close(d.timer_fd);
	if (d.hs_timer_fd >= 0)
		close(d.hs_timer_fd);
	if (d.reserve_fd >= 0)
		close(d.reserve_fd);
	if (d.epfd >= 0)
		close(d.epfd);
	free(d.socket_path);
	free(d.clients);
	free(d.client_gen);
	free(d.uids);
	free(d.policy);
	free(d.dirty.v);
	free(d.spare.v);
	rdd_groups_fini(&d);
	rdd_slab_fini(&d.slab);
	rdd_config_fini(&cfg);
	return rc;
}
