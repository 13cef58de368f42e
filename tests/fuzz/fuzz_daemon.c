/* libFuzzer harness for the whole daemon's request handling, driven the way systemd's
 * fuzz-varlink drives a real event loop: a struct rdd set up as daemon/main.c does (no
 * listening socket, no signals), clients connected over socketpair(SOCK_SEQPACKET) and
 * handed to rdd_client_new, and the fuzz input played as a script of messages (with fds
 * from a pool of real files attached), readiness changes on those files and pauses in
 * reading the daemon's answers. After every step the loop runs until it settles
 * (rdd_loop_once with timeout 0, as rdd_run would), and then:
 *   - every message the daemon sent is a valid daemon message;
 *   - the daemon's fd count is its baseline + clients + registrations + dispatch groups,
 *     and so is the process's fd table: no fd is leaked or closed twice.
 * At the end both clients hang up and the daemon must be back to empty: no client, no
 * registration, no group, no uid, nothing in its epoll but its own timer. Any mismatch
 * aborts. Admin commands are allowed (we are the daemon's uid); an "upgrade" that names a
 * real readyd gets as far as execv, which the harness defines to fail, so the fuzzer is
 * never replaced by a daemon and the upgrade's failure path runs instead.
 *
 * Input: byte 0 picks the limits: bit 0, tiny registration and fd limits; bit 1, budgets
 * of one request and one EVENTS packet per wakeup and the smallest output limit a config
 * allows; bit 2, one connection per uid; bit 3, a policy that lets us in by our gid but
 * makes us no admin; bit 4, a policy that refuses us, after asking for our groups. Then
 * steps, each an op byte: bits 0-2 the kind, bit 3 "patch the header's length to the
 * real one", bit 4 which of the two clients.
 *   0-2  message: u8 nfds (> 253 means 253), u8 pick, u16 len, len bytes. The i-th fd is
 *        pool[(pick + i * (pick / N)) % N], N the pool's size: 11 (13 with the client ends).
 *   3    hang up: u8 mask of pool files whose other end goes away (see hang_up_pool()).
 *   4    oversized message: the same fields; the body is padded to 65536 + len bytes.
 *   5    poke: u8 mask of pool files to make ready (see poke()).
 *   6    drain: u8 mask of pool files to make not ready again.
 *   7    the client stops (or starts again) reading the daemon's messages.
 * A client the daemon disconnected is connected again by its next message. The daemon's
 * end of each connection has the smallest send buffer, so that its output blocks after a
 * few messages a client does not read.
 *
 * READYD_FUZZ_LOG_LEVEL=debug shows the daemon's log, READYD_FUZZ_TRACE=1 the steps and
 * the daemon's answers. READYD_FUZZ_CLIENT_ENDS=1 adds the two clients' own connection
 * ends to the pool (see crashers/README.md). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../daemon/config.h"
#include "../../daemon/log.h"
#include "../../daemon/rdd.h"
#include "../../proto/rdp.h"
#include "../../proto/rdp_io.h"
#include "fuzz.h"

#define NCLIENTS 2
#define LOOP_TURNS_MAX 2000 /* a loop that has not settled by then is spinning */
#define SEND_TRIES 8

enum {
	P_PIPE_R,     /* pipe A, read end: readable when poked */
	P_PIPE_W,     /* pipe A, write end (one page): writable until filled */
	P_PIPE2_R,    /* pipe B, read end */
	P_EVENTFD,    /* eventfd */
	P_EVENTFD_SEM,/* eventfd in semaphore mode */
	P_SOCK,       /* a socketpair end; its peer is poked, sometimes with an fd in flight */
	P_FILE,       /* a regular file: epoll refuses it */
	P_DEVNULL,    /* /dev/null: epoll refuses it */
	P_DIR,        /* a directory */
	P_EPOLL,      /* an epoll fd watching pipe A's read end */
	P_PIPE3_W,    /* pipe C, write end: an error once its read end is closed */
	POOL_FILES,
	P_CLIENT0 = POOL_FILES, /* only with READYD_FUZZ_CLIENT_ENDS: the clients' ends */
	P_CLIENT1,
	POOL_MAX,
};

static struct rdd d;
static struct rdd_limits default_lim;
static uint32_t base_nfds;
static int base_watches;
static int pool[POOL_MAX];
static int pool_n = POOL_FILES;
/* The other ends: ours, to make pool files ready or hang them up. */
static int pipe_a_w = -1, pipe_b_w = -1, pipe_c_r = -1, sock_peer = -1;
static bool trace;

#define TRACE(...) (trace ? fprintf(stderr, __VA_ARGS__) : 0)

struct fclient {
	int fd;       /* our end, or -1 */
	bool reading; /* we read what the daemon sends */
};
static struct fclient cl[NCLIENTS];

static uint8_t msgbuf[RDP_MSG_MAX + 65536];
static uint8_t rxbuf[RDP_MSG_MAX];

static __attribute__((noreturn, format(printf, 1, 2))) void fail(const char *fmt, ...)
{
	va_list ap;
	fputs("fuzz-daemon: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

/* The harness never re-executes itself: the daemon's live upgrade fails here, as it may
 * in production, and carries on. */
int execv(const char *path, char *const argv[])
{
	(void)path;
	(void)argv;
	errno = EPERM;
	return -1;
}

static int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	if (!dir)
		fail("opendir /proc/self/fd: %s", strerror(errno));
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n - 1; /* the directory's own fd */
}

/* Registrations in the daemon's epoll, from its fdinfo ("tfd:" lines). */
static int epoll_watches(void)
{
	char p[64], line[256];
	snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", d.epfd);
	FILE *f = fopen(p, "re");
	if (!f)
		fail("%s: %s", p, strerror(errno));
	int n = 0;
	while (fgets(line, sizeof(line), f))
		n += strncmp(line, "tfd:", 4) == 0;
	fclose(f);
	return n;
}

static int must(int fd, const char *what)
{
	if (fd < 0)
		fail("%s: %s", what, strerror(errno));
	return fd;
}

static void make_pool(void)
{
	int p[2];
	must(pipe2(p, O_NONBLOCK | O_CLOEXEC), "pipe");
	pool[P_PIPE_R] = p[0];
	pool[P_PIPE_W] = p[1];
	pipe_a_w = p[1];
	fcntl(p[1], F_SETPIPE_SZ, 4096); /* cheap to fill */
	pool[P_EVENTFD] = must(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd");
	pool[P_EVENTFD_SEM] = must(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE), "eventfd");
	char tmpl[] = "/tmp/readyd-fuzz-XXXXXX";
	pool[P_FILE] = must(mkostemp(tmpl, O_CLOEXEC), "mkostemp");
	unlink(tmpl);
	pool[P_DEVNULL] = must(open("/dev/null", O_RDWR | O_CLOEXEC), "/dev/null");
	pool[P_DIR] = must(open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "/");
	pool[P_EPOLL] = must(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
	struct epoll_event ev = { .events = EPOLLIN };
	if (epoll_ctl(pool[P_EPOLL], EPOLL_CTL_ADD, pool[P_PIPE_R], &ev) < 0)
		fail("epoll_ctl: %s", strerror(errno));
	pool[P_CLIENT0] = pool[P_CLIENT1] = pool[P_DEVNULL];
	if (getenv("READYD_FUZZ_CLIENT_ENDS"))
		pool_n = POOL_MAX;
}

/* The pairs a step may hang up, made again (anew) before the next input. */
static void make_pairs(void)
{
	int p[2];
	if (pipe_b_w < 0) {
		if (pool[P_PIPE2_R] >= 0)
			close(pool[P_PIPE2_R]);
		must(pipe2(p, O_NONBLOCK | O_CLOEXEC), "pipe");
		pool[P_PIPE2_R] = p[0];
		pipe_b_w = p[1];
	}
	if (pipe_c_r < 0) {
		if (pool[P_PIPE3_W] >= 0)
			close(pool[P_PIPE3_W]);
		must(pipe2(p, O_NONBLOCK | O_CLOEXEC), "pipe");
		pipe_c_r = p[0];
		pool[P_PIPE3_W] = p[1];
	}
	if (sock_peer < 0) {
		if (pool[P_SOCK] >= 0)
			close(pool[P_SOCK]);
		must(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p), "socketpair");
		pool[P_SOCK] = p[0];
		sock_peer = p[1];
	}
}

/* bit 0: pipe B's write end closes (its read end: hang-up); bit 1: the socket's peer
 * shuts down writing (read-closed); bit 2: pipe C's read end closes (its write end: an
 * error); bit 3: the socket's peer closes. */
static void hang_up_pool(uint8_t mask)
{
	if ((mask & 0x1) && pipe_b_w >= 0) {
		close(pipe_b_w);
		pipe_b_w = -1;
	}
	if ((mask & 0x2) && sock_peer >= 0)
		shutdown(sock_peer, SHUT_WR);
	if ((mask & 0x4) && pipe_c_r >= 0) {
		close(pipe_c_r);
		pipe_c_r = -1;
	}
	if ((mask & 0x8) && sock_peer >= 0) {
		close(sock_peer);
		sock_peer = -1;
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *level = getenv("READYD_FUZZ_LOG_LEVEL");
	struct rlimit rl = { .rlim_cur = 1024 };

	signal(SIGPIPE, SIG_IGN);
	unsetenv("NOTIFY_SOCKET"); /* no fd store, no sd_notify: the harness is no service */
	trace = getenv("READYD_FUZZ_TRACE") != NULL;
	getrlimit(RLIMIT_NOFILE, &rl);
	/* As daemon/main.c sets it up, less the socket and the signals. */
	d = (struct rdd){
		.epfd = -1,
		.sigfd = -1,
		.timer_fd = -1,
		.hs_timer_fd = -1,
		.reserve_fd = -1,
		.lim = { .req_budget = 64, .event_budget = 4 },
		.nfds = 3,
		.config_path = "/nonexistent/readyd.json",
		.cmdline_log_level = level ? rdd_log_parse_level(level) : 0,
		.nofile = rl.rlim_cur,
		.start_usec = rdd_now_usec(CLOCK_MONOTONIC),
	};
	struct rdd_config cfg = { .log_level = -1 };
	rdd_config_apply(&d, &cfg);
	if (rdd_slab_init(&d.slab) < 0)
		fail("rdd_slab_init");
	d.epfd = must(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
	d.reserve_fd = must(open("/dev/null", O_RDONLY | O_CLOEXEC), "/dev/null");
	d.nfds += 2;
	int r = rdd_handshake_init(&d);
	if (r < 0)
		fail("rdd_handshake_init: %s", strerror(-r));
	base_nfds = d.nfds;
	base_watches = epoll_watches();
	default_lim = d.lim;
	for (int i = 0; i < POOL_MAX; i++)
		pool[i] = -1;
	make_pool();
	make_pairs();
	for (int i = 0; i < NCLIENTS; i++)
		cl[i] = (struct fclient){ .fd = -1 };
	return 0;
}

/* Run the loop until it has nothing left to do. */
static void settle(void)
{
	for (int i = 0; i < LOOP_TURNS_MAX; i++) {
		int n = rdd_loop_once(&d, 0);
		if (n < 0)
			fail("rdd_loop_once: %s", strerror(-n));
		if (n == 0 && d.dirty.n == 0)
			return;
	}
	fail("the loop has not settled after %d turns: a busy loop", LOOP_TURNS_MAX);
}

static void hang_up(int i)
{
	if (cl[i].fd >= 0)
		close(cl[i].fd);
	cl[i].fd = -1;
	cl[i].reading = true;
	if (pool_n == POOL_MAX)
		pool[P_CLIENT0 + i] = pool[P_DEVNULL];
}

/* Read what the daemon sent client i; every message must be one a client accepts. */
static int read_replies(int i)
{
	int got = 0;
	while (cl[i].fd >= 0) {
		struct rdp_rx rx;
		struct rdp_hdr h;
		int r = rdp_recv(cl[i].fd, rxbuf, sizeof(rxbuf), &rx, true);
		if (r == -EAGAIN)
			break;
		if (r <= 0) {
			hang_up(i); /* the daemon closed the connection */
			break;
		}
		got++;
		TRACE("  client %d <- %zu bytes: type %#x id %u count %u\n", i, rx.len,
		      rx.len >= RDP_HDR_SIZE ? rxbuf[4] | rxbuf[5] << 8 : 0,
		      rx.len >= RDP_HDR_SIZE ? rdp_le32(rxbuf + 8) : 0,
		      rx.len >= RDP_HDR_SIZE ? rdp_le32(rxbuf + 12) : 0);
		if (trace && rx.len >= RDP_HDR_SIZE && rdp_le32(rxbuf + 12) * 4 + RDP_HDR_SIZE == rx.len &&
		    (rxbuf[4] | rxbuf[5] << 8) == RDP_MSG_REPLY) {
			fputs("    statuses:", stderr);
			for (uint32_t k = 0; k < rdp_le32(rxbuf + 12) && k < 16; k++)
				fprintf(stderr, " %u", rdp_le32(rxbuf + RDP_HDR_SIZE + 4 * k));
			fputc('\n', stderr);
		}
		if (rx.nfds || rx.truncated || rx.ctruncated)
			fail("the daemon sent fds or an oversized message");
		uint32_t why = rdp_check_daemon_msg(rxbuf, rx.len, 0, &h);
		if (why != RDP_E_NONE)
			fail("the daemon sent an invalid message (%zu bytes): %s", rx.len,
			     rdp_reason_str(why));
	}
	return got;
}

/* Settle, and let the clients that read take the daemon's output, until neither has
 * more to do. */
static void run(void)
{
	for (int round = 0; round < LOOP_TURNS_MAX; round++) {
		settle();
		int got = 0;
		for (int i = 0; i < NCLIENTS; i++)
			if (cl[i].reading)
				got += read_replies(i);
		if (!got)
			return;
	}
	fail("the daemon keeps sending after %d rounds", LOOP_TURNS_MAX);
}

static int connect_client(int i)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		fail("socketpair: %s", strerror(errno));
	cl[i] = (struct fclient){ .fd = sv[1], .reading = true };
	if (pool_n == POOL_MAX)
		pool[P_CLIENT0 + i] = sv[1];
	int small = 0; /* the kernel's minimum */
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	(void)rdd_client_new(&d, sv[0]); /* takes sv[0], even on failure */
	run();
	return cl[i].fd;
}

static uint32_t live_groups(void)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < d.ngroups_cap; i++)
		n += d.groups[i] != NULL;
	return n;
}

/* The process holds its own fds, the pool, our client ends, and the daemon's: baseline,
 * one per client, one per registration, one per dispatch group. */
static void check_fds(int start_fds)
{
	uint32_t groups = live_groups();
	uint32_t want = base_nfds + d.nclients + d.slab.used + groups;
	if (d.nfds != want)
		fail("daemon counts %u fds, holds %u (%u clients, %u registrations, %u groups)",
		     d.nfds, want, d.nclients, d.slab.used, groups);
	int ours = 0;
	for (int i = 0; i < NCLIENTS; i++)
		ours += cl[i].fd >= 0;
	ours -= (pipe_b_w < 0) + (pipe_c_r < 0) + (sock_peer < 0); /* hung up by a step */
	int have = count_fds();
	if (have != start_fds + ours + (int)(d.nclients + d.slab.used + groups))
		fail("%d fds open, expected %d + %d of ours + %u daemon clients + %u registrations "
		     "+ %u groups", have, start_fds, ours, d.nclients, d.slab.used, groups);
}

static void send_msg(int i, size_t len, const int *fds, size_t nfds)
{
	if (cl[i].fd < 0 && connect_client(i) < 0)
		return;
	for (int t = 0; t < SEND_TRIES; t++) {
		int r = rdp_send(cl[i].fd, msgbuf, len, fds, nfds, true);
		if (r != -EAGAIN) {
			if (r == -EPIPE || r == -ECONNRESET)
				hang_up(i);
			break;
		}
		/* The daemon's queue for us is full: let it read (and us read its answers). */
		run();
		if (cl[i].fd < 0)
			break;
	}
	run();
}

static void poke(uint8_t mask)
{
	static const uint8_t byte = 'x';
	uint64_t one = 1;
	ssize_t w = 0;
	if (mask & 0x01)
		w += write(pipe_a_w, &byte, 1);
	if (mask & 0x02) { /* fill pipe A: its write end stops being writable */
		static const uint8_t page[4096];
		while (write(pipe_a_w, page, sizeof(page)) > 0)
			;
	}
	if (mask & 0x04)
		w += write(pool[P_EVENTFD], &one, sizeof(one));
	if (mask & 0x08)
		w += write(pool[P_EVENTFD_SEM], &one, sizeof(one));
	if (mask & 0x10 && sock_peer >= 0)
		w += send(sock_peer, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (mask & 0x20 && sock_peer >= 0) /* a byte with an fd in flight to the pool's socket */
		(void)rdp_send(sock_peer, &byte, 1, &pool[P_DEVNULL], 1, true);
	if (mask & 0x40 && pipe_b_w >= 0)
		w += write(pipe_b_w, &byte, 1);
	if (mask & 0x80 && sock_peer >= 0) /* out-of-band data: EPOLLPRI on the pool's socket */
		w += send(sock_peer, &byte, 1, MSG_OOB | MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w;
}

static void drain_fd(int fd)
{
	for (;;) {
		struct rdp_rx rx;
		int r = rdp_recv(fd, rxbuf, sizeof(rxbuf), &rx, true);
		if (r == -ENOTSOCK) {
			while (read(fd, rxbuf, sizeof(rxbuf)) > 0)
				;
			return;
		}
		rdp_rx_close_fds(&rx);
		if (r <= 0)
			return;
	}
}

static void drain(uint8_t mask)
{
	if (mask & 0x03)
		drain_fd(pool[P_PIPE_R]);
	if (mask & 0x04)
		drain_fd(pool[P_EVENTFD]);
	if (mask & 0x08)
		drain_fd(pool[P_EVENTFD_SEM]);
	if (mask & 0xb0) {
		char oob;
		while (recv(pool[P_SOCK], &oob, 1, MSG_OOB | MSG_DONTWAIT) > 0)
			;
		drain_fd(pool[P_SOCK]);
	}
	if (mask & 0x40)
		drain_fd(pool[P_PIPE2_R]);
}

static void set_limits(uint8_t profile)
{
	d.lim = default_lim;
	if (profile & 0x1) {
		d.lim.regs_per_client = 4;
		d.lim.max_fds = base_nfds + 8;
	}
	if (profile & 0x2) {
		d.lim.req_budget = 1;
		d.lim.event_budget = 1;
		d.lim.out_max = RDP_MSG_MAX; /* the least limits.output_bytes_per_client allows */
	}
	if (profile & 0x4)
		d.lim.clients_per_uid = 1;
	free(d.policy);
	d.policy = NULL;
	if (profile & 0x18) {
		d.policy = calloc(1, sizeof(*d.policy));
		if (!d.policy)
			fail("out of memory");
		d.policy->allow_uids[d.policy->n_allow_uids++] = getuid() + 1;
		d.policy->admin_uids[d.policy->n_admin_uids++] = getuid() + 1;
		d.policy->admin_set = true;
		d.policy->allow_gids[d.policy->n_allow_gids++] = getgid() + ((profile & 0x10) ? 1 : 0);
	}
}

static void step_message(uint8_t op, const uint8_t *p, size_t n, bool oversized)
{
	int i = (op >> 4) & 1;
	size_t nfds = p[0] > RDP_FDS_MAX ? RDP_FDS_MAX : p[0];
	unsigned pick = p[1];
	size_t len = (size_t)p[2] | (size_t)p[3] << 8;
	if (len > n - 4)
		len = n - 4;
	memcpy(msgbuf, p + 4, len);
	size_t total = len;
	if (oversized) {
		total = RDP_MSG_MAX + len;
		memset(msgbuf + len, 0, total - len);
	}
	if ((op & 0x8) && total >= 4)
		rdp_st32(msgbuf, (uint32_t)total);
	int fds[RDP_FDS_MAX];
	for (size_t k = 0; k < nfds; k++)
		fds[k] = pool[(pick + k * (pick / (unsigned)pool_n)) % (unsigned)pool_n];
	TRACE("client %d -> %zu bytes, %zu fds (pick %u)%s\n", i, total, nfds, pick,
	      cl[i].fd < 0 ? ", connecting" : "");
	send_msg(i, total, fds, nfds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int start_fds = count_fds();
	set_limits(data[0]);
	d.next_client_id = 0; /* the daemon is empty: client ids start again at 1 */
	size_t pos = 1;

	while (pos < size) {
		uint8_t op = data[pos++];
		size_t left = size - pos;
		switch (op & 7) {
		case 0: case 1: case 2: case 4: {
			if (left < 4) {
				pos = size;
				break;
			}
			size_t len = (size_t)data[pos + 2] | (size_t)data[pos + 3] << 8;
			size_t used = 4 + (len < left - 4 ? len : left - 4);
			step_message(op, data + pos, left, (op & 7) == 4);
			pos += used;
			break;
		}
		case 3:
			if (left < 1) {
				pos = size;
				break;
			}
			TRACE("hang up %#x\n", data[pos]);
			hang_up_pool(data[pos++]);
			run();
			break;
		case 5:
		case 6:
			if (left < 1) {
				pos = size;
				break;
			}
			TRACE("%s %#x\n", (op & 7) == 5 ? "poke" : "drain", data[pos]);
			if ((op & 7) == 5)
				poke(data[pos++]);
			else
				drain(data[pos++]);
			run();
			break;
		case 7: {
			int i = (op >> 4) & 1;
			cl[i].reading = !cl[i].reading;
			TRACE("client %d %s reading\n", i, cl[i].reading ? "starts" : "stops");
			run();
			break;
		}
		}
		check_fds(start_fds);
	}

	/* Both clients hang up; the daemon must let go of everything. */
	for (int i = 0; i < NCLIENTS; i++)
		hang_up(i);
	run();
	drain(0xff);
	make_pairs();
	check_fds(start_fds);
	if (d.nclients || d.slab.used || d.nuids || d.dirty.n || live_groups() || d.gmap_n ||
	    d.nfds != base_nfds)
		fail("not back to empty: %u clients, %u registrations, %u uids, %u dirty, %u groups, "
		     "%u group members, %u fds (baseline %u)", d.nclients, d.slab.used, d.nuids,
		     d.dirty.n, live_groups(), d.gmap_n, d.nfds, base_nfds);
	int w = epoll_watches();
	if (w != base_watches)
		fail("%d fds in the daemon's epoll, %d at rest", w, base_watches);
	if (count_fds() != start_fds)
		fail("%d fds open after the input, %d before", count_fds(), start_fds);
	return 0;
}
