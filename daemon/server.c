/* The event loop: one epoll for the listener, the signalfd, every client connection and
 * every registered fd. epoll_wait is called here and nowhere else; each event is
 * dispatched on the tag in its epoll_data, then the clients with work are serviced. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <systemd/sd-daemon.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "../proto/rdp_io.h"
#include "../proto/rdp_path.h"
#include "log.h"
#include "rdd.h"

#define EPOLL_BATCH 1024
/* While epoll keeps returning full batches, keep harvesting (up to this many rounds)
 * before flushing, so that a busy client's EVENTS packets carry more records and the
 * ready queue does the coalescing. At low load a batch is never full and nothing waits. */
#define HARVEST_ROUNDS 8
#define ACCEPT_BUDGET 64


uint64_t rdd_now_usec(int clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Create the socket's directory when it is missing (one level, like RuntimeDirectory=). */
static void make_parent_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path || (size_t)(slash - path) >= sizeof(dir))
		return;
	memcpy(dir, path, (size_t)(slash - path));
	dir[slash - path] = '\0';
	if (mkdir(dir, 0755) == 0)
		log_info("created directory %s", dir);
}

/* Is a live server accepting on path? */
static bool socket_is_live(const struct sockaddr_un *sa, int salen)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool live = connect(fd, (const struct sockaddr *)sa, (socklen_t)salen) == 0 ||
		    errno == EAGAIN;
	close(fd);
	return live;
}

int rdd_listen_adopt(struct rdd *d, int fd)
{
	if (d->nlisten == RDD_LISTEN_MAX)
		return -EMFILE;
	struct epoll_event ev = { .events = EPOLLIN,
				  .data.u64 = rdd_data(RDD_TAG_LISTEN, 0, d->nlisten) };
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	/* Its address, to recognise a client's own connection offered as a registration. */
	socklen_t len = sizeof(d->listen_addr[d->nlisten]);
	if (getsockname(fd, (struct sockaddr *)&d->listen_addr[d->nlisten], &len) < 0)
		len = 0;
	d->listen_addr_len[d->nlisten] = len;
	d->listen_fds[d->nlisten++] = fd;
	d->nfds++;
	return 0;
}

bool rdd_is_own_connection(const struct rdd *d, int fd)
{
	struct sockaddr_un peer;
	socklen_t len = sizeof(peer);
	/* One cheap syscall: anything but a socket answers ENOTSOCK at once. */
	if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0 || peer.sun_family != AF_UNIX)
		return false;
	for (unsigned i = 0; i < d->nlisten; i++)
		if (d->listen_addr_len[i] == len && len > sizeof(sa_family_t) &&
		    memcmp(&d->listen_addr[i], &peer, len) == 0)
			return true;
	return false;
}

int rdd_listen_activated(struct rdd *d)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	if (n <= 0) {
		if (n < 0)
			log_err("LISTEN_FDS: %s", strerror(-n));
		return n;
	}
	int taken = 0, clients = 0;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names && names[i] ? names[i] : "unknown";
		unsigned long long id;
		char extra;
		if (sscanf(name, "rdc-%llu%c", &id, &extra) == 1) {
			/* A client connection from the fd store: we crashed and were restarted. */
			fcntl(fd, F_SETFD, FD_CLOEXEC);
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
			/* rdd_client_adopt_stored owns fd from the call on, failure or not. */
			int r = -ENOTSOCK;
			if (sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 0) > 0)
				r = rdd_client_adopt_stored(d, fd, id);
			else
				close(fd);
			if (r < 0) {
				log_warning("stored connection %s: %s; dropped", name, strerror(-r));
				(void)sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=%s", name);
			} else
				clients++;
			continue;
		}
		if (sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 1) <= 0) {
			log_warning("passed fd %d (%s) is not a listening AF_UNIX SOCK_SEQPACKET socket; "
				    "closing it", fd, name);
			close(fd);
			continue;
		}
		int fl = fcntl(fd, F_GETFL), r = 0;
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
			r = -errno;
		else
			r = rdd_listen_adopt(d, fd);
		if (r < 0) {
			log_err("cannot use passed fd %d (%s): %s", fd, name,
				r == -EMFILE ? "more than 16 listening sockets" : strerror(-r));
			close(fd);
			continue;
		}
		log_info("listening on socket passed by systemd (fd %d, %s)", fd, name);
		taken++;
	}
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	if (clients)
		log_notice("restarted: %d client connections kept by systemd, asked to resync", clients);
	/* Clients alone, without a listener: bind our own socket as usual. */
	return taken > 0 || clients > 0 ? taken : -EBADF;
}

int rdd_listen(struct rdd *d, const char *path)
{
	struct sockaddr_un sa;
	struct stat st;
	int salen = rdp_sockaddr(&sa, path);
	int r;

	if (salen < 0) {
		log_err("socket path too long (at most %zu bytes): %s", sizeof(sa.sun_path) - 1, path);
		return salen;
	}
	make_parent_dir(path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, (socklen_t)salen) < 0) {
		r = -errno;
		if (r != -EADDRINUSE) {
			log_err("bind %s: %s", path, strerror(-r));
			goto out_close;
		}
		if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
			log_err("%s exists and is not a socket; refusing to replace it", path);
			goto out_close;
		}
		if (socket_is_live(&sa, salen)) {
			log_err("another readyd is already serving %s; refusing to start", path);
			goto out_close;
		}
		log_notice("replacing stale socket %s", path);
		if (unlink(path) < 0 && errno != ENOENT) {
			r = -errno;
			log_err("unlink stale %s: %s", path, strerror(-r));
			goto out_close;
		}
		if (bind(fd, (struct sockaddr *)&sa, (socklen_t)salen) < 0) {
			r = -errno;
			log_err("bind %s: %s", path, strerror(-r));
			goto out_close;
		}
	}
	/* Who may connect is the policy's business, checked with SO_PEERCRED at accept. */
	if (chmod(path, 0666) < 0)
		log_warning("chmod %s: %s", path, strerror(errno));
	if (stat(path, &st) == 0) {
		d->bound_dev = (uint64_t)st.st_dev;
		d->bound_ino = (uint64_t)st.st_ino;
	}
	if (listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		log_err("listen %s: %s", path, strerror(-r));
		goto out_unlink;
	}
	r = rdd_listen_adopt(d, fd);
	if (r < 0)
		goto out_unlink;
	d->socket_path = strdup(path);
	log_info("listening on %s", path);
	return 0;

out_unlink:
	unlink(path);
out_close:
	close(fd);
	return r;
}

void rdd_listen_resume(struct rdd *d)
{
	for (unsigned i = 0; i < d->nlisten; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = rdd_data(RDD_TAG_LISTEN, 0, i) };
		if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->listen_fds[i], &ev) < 0 && errno != EEXIST)
			log_err("resuming listener: %s", strerror(errno));
	}
	d->accept_paused = false;
	log_info("accepting connections again");
}

static void accept_pause(struct rdd *d)
{
	for (unsigned i = 0; i < d->nlisten; i++)
		epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->listen_fds[i], NULL);
	d->accept_paused = true;
	log_warning("out of file descriptors: not accepting until a client leaves");
}

/* Out of fds: give the reserve fd back to accept and close one pending connection, so
 * the listener does not stay readable and spin the loop. */
static void accept_refuse_one(struct rdd *d, int lfd)
{
	if (d->reserve_fd < 0) {
		accept_pause(d);
		return;
	}
	close(d->reserve_fd);
	d->reserve_fd = -1;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		close(fd);
	d->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	log_warning("out of file descriptors: refused a connection");
}

static void do_accept(struct rdd *d, uint32_t idx)
{
	if (idx >= d->nlisten)
		return;
	int lfd = d->listen_fds[idx];
	for (int i = 0; i < ACCEPT_BUDGET && !d->accept_paused; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			switch (errno) {
			case EAGAIN:
				return;
			case EINTR:
			case ECONNABORTED:
			case EPROTO:
				continue;
			case EMFILE:
			case ENFILE:
			case ENOBUFS:
			case ENOMEM:
				accept_refuse_one(d, lfd);
				continue;
			default:
				log_err("accept: %s", strerror(errno));
				return;
			}
		}
		d->accepted++;
		if (d->nfds >= d->lim.max_fds) {
			size_t len = rdp_encode_error(rdd_txbuf, RDP_MSG_MAX, 0, EMFILE, RDP_E_RESOURCE,
						      "the daemon is at its fd limit");
			(void)rdp_send(fd, rdd_txbuf, len, NULL, 0, true);
			close(fd);
			log_warning("fd limit (%u) reached: refused a connection", d->lim.max_fds);
			continue;
		}
		(void)rdd_client_new(d, fd);
	}
}

static void handle_signal(struct rdd *d)
{
	struct signalfd_siginfo si;
	while (read(d->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			log_info("%s: shutting down", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
			d->stopping = true;
			break;
		case SIGHUP: {
			char err[512];
			log_info("SIGHUP: reloading %s", d->config_path);
			(void)rdd_reload(d, err, sizeof(err));
			break;
		}
		case SIGUSR2: {
			char err[256];
			log_info("SIGUSR2: upgrading");
			(void)rdd_upgrade(d, NULL, NULL, 0, err, sizeof(err));
			break;
		}
		default:
			break;
		}
	}
}

int rdd_signals_init(struct rdd *d)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN);
	d->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (d->sigfd < 0)
		return -errno;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = rdd_data(RDD_TAG_SIGNAL, 0, 0) };
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->sigfd, &ev) < 0)
		return -errno;
	d->nfds++;
	return 0;
}

static void dispatch(struct rdd *d, const struct epoll_event *evs, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t data = evs[i].data.u64;
		uint32_t slot = (uint32_t)data;
		uint32_t gen = (uint32_t)(data >> 32) & RDD_GEN_MASK;
		switch ((enum rdd_tag)(data >> 56)) {
		case RDD_TAG_REG:
			rdd_reg_event(d, slot, gen, evs[i].events);
			break;
		case RDD_TAG_CLIENT:
			rdd_client_event(d, slot, gen, evs[i].events);
			break;
		case RDD_TAG_LISTEN:
			do_accept(d, slot);
			break;
		case RDD_TAG_SIGNAL:
			handle_signal(d);
			break;
		case RDD_TAG_TIMER:
			rdd_notify_tick(d);
			break;
		case RDD_TAG_GROUP:
			rdd_group_event(d, slot, gen, evs[i].events);
			break;
		case RDD_TAG_HANDSHAKE:
			rdd_handshake_expire(d);
			break;
		}
	}
}

static void service_dirty(struct rdd *d)
{
	struct rdd_worklist work = d->dirty;
	d->dirty = d->spare;
	d->dirty.n = 0;
	for (uint32_t i = 0; i < work.n; i++) {
		uint32_t slot = (uint32_t)work.v[i];
		uint32_t gen = (uint32_t)(work.v[i] >> 32) & RDD_GEN_MASK;
		struct rdd_client *c = d->clients[slot];
		if (!c || c->gen != gen)
			continue;
		c->on_dirty = false;
		rdd_client_service(d, c);
	}
	work.n = 0;
	d->spare = work;
	if (d->dirty_overflow) {
		/* A client's work could not be listed (out of memory): serve every client
		 * not listed since; one with nothing to do costs a few checks. */
		d->dirty_overflow = false;
		for (uint32_t slot = 0; slot < d->nclients_cap; slot++) {
			struct rdd_client *c = d->clients[slot];
			if (c && !c->on_dirty)
				rdd_client_service(d, c);
		}
	}
}

/* Stop accepting, give every client its queued output once, then close everything. */
static void shutdown_all(struct rdd *d)
{
	for (unsigned i = 0; i < d->nlisten; i++) {
		epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->listen_fds[i], NULL);
		close(d->listen_fds[i]);
		d->nfds--;
	}
	d->nlisten = 0;
	struct stat st;
	if (d->socket_path && stat(d->socket_path, &st) == 0 && (uint64_t)st.st_dev == d->bound_dev &&
	    (uint64_t)st.st_ino == d->bound_ino)
		unlink(d->socket_path);
	for (uint32_t i = 0; i < d->nclients_cap; i++) {
		struct rdd_client *c = d->clients[i];
		if (!c)
			continue;
		c->in_pending = false;
		c->out_ready = true;
		rdd_client_service(d, c);
		if (d->clients[i] == c)
			rdd_client_close(d, c, "daemon shutting down");
	}
}

/* One turn of the loop: wait up to 'timeout' ms (epoll_wait's meaning), harvest and
 * dispatch what arrived, then service the clients with work. Returns the number of
 * events dispatched, or -errno when epoll_wait fails (EINTR is not a failure). */
int rdd_loop_once(struct rdd *d, int timeout)
{
	struct epoll_event evs[EPOLL_BATCH];
	int n = 0, total = 0;
	bool timed_out = false;

	for (int round = 0; round < HARVEST_ROUNDS; round++) {
		n = epoll_wait(d->epfd, evs, EPOLL_BATCH, round ? 0 : timeout);
		timed_out = round == 0 && n == 0;
		if (n <= 0)
			break;
		dispatch(d, evs, n);
		total += n;
		if (n < EPOLL_BATCH)
			break;
	}
	if (n < 0) {
		if (errno == EINTR)
			return total;
		int r = -errno;
		log_err("epoll_wait: %s", strerror(-r));
		return r;
	}
	if (timed_out && d->accept_paused)
		rdd_listen_resume(d);
	service_dirty(d);
	return total;
}

int rdd_run(struct rdd *d)
{
	int r = 0;

	rdd_notify_ready(d);

	while (!d->stopping) {
		int timeout = d->dirty.n || d->dirty_overflow ? 0 : d->accept_paused ? 1000 : -1;
		r = rdd_loop_once(d, timeout);
		if (r < 0)
			break;
	}
	if (r > 0)
		r = 0;
	rdd_notify_stopping(d);
	shutdown_all(d);
	return r;
}
