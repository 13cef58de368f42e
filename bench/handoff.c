/* handoff_rate: fds registered per second. readyd: rd_add_batch of 253 fds (one ADD,
 * its reply awaited), then rd_delete_batch of the same 253. The floor: the same ADD and
 * DEL messages, byte for byte, to a bare server that receives the fds with SCM_RIGHTS,
 * epoll_ctl ADDs them, replies, then on DEL epoll_ctl DELs and closes them and replies.
 * handoff_rate_single does the same one fd at a time. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "bench.h"
#include "readyd.h"

#define BATCH RD_BATCH_MAX

union cmsg_fds {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int) * BATCH)];
};

struct floor_arg {
	int sock;
	int ready_fd;
};

/* The floor server: no validation beyond what it needs not to crash, no tables but a
 * token-indexed array. */
static int floor_server(void *arg)
{
	const struct floor_arg *a = arg;
	static uint8_t msg[RDP_MSG_MAX];
	uint8_t reply[RDP_HDR_SIZE + BATCH * RDP_STATUS_SIZE];
	int table[BATCH];
	int epfd = epoll_create1(EPOLL_CLOEXEC);

	for (int i = 0; i < BATCH; i++)
		table[i] = -1;
	bench_say(a->ready_fd, epfd < 0);
	for (;;) {
		union cmsg_fds cm;
		struct iovec iov = { .iov_base = msg, .iov_len = sizeof(msg) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
				     .msg_controllen = sizeof(cm.buf) };
		ssize_t n = recvmsg(a->sock, &mh, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < (ssize_t)RDP_HDR_SIZE)
			return 0;
		int fds[BATCH], nfds = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
				memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)nfds);
			}
		uint16_t type = (uint16_t)(msg[4] | msg[5] << 8);
		uint32_t id = rdp_le32(msg + 8), count = rdp_le32(msg + 12);
		if (count > BATCH)
			return 1;
		rdp_batch_begin(reply, RDP_MSG_REPLY, id);
		for (uint32_t i = 0; i < count; i++) {
			uint32_t st = 0;
			if (type == RDP_MSG_ADD && (int)i < nfds) {
				uint64_t tok = rdp_le64(msg + RDP_HDR_SIZE + i * RDP_ADD_ENTRY_SIZE) % BATCH;
				struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET,
							  .data.u64 = tok };
				if (epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
					st = (uint32_t)errno;
					close(fds[i]);
				} else {
					table[tok] = fds[i];
				}
			} else if (type == RDP_MSG_DEL) {
				uint64_t tok = rdp_le64(msg + RDP_HDR_SIZE + i * RDP_TOK_ENTRY_SIZE) % BATCH;
				if (table[tok] < 0 || epoll_ctl(epfd, EPOLL_CTL_DEL, table[tok], NULL) < 0)
					st = ENOENT;
				if (table[tok] >= 0)
					close(table[tok]);
				table[tok] = -1;
			}
			rdp_reply_set(reply, i, st);
		}
		size_t len = rdp_batch_finish(reply, count);
		if (send(a->sock, reply, len, MSG_NOSIGNAL) < 0)
			return 2;
	}
}

/* The floor's client side: send one message (with fds), wait for its reply. */
static int floor_call(int sock, const void *msg, size_t len, const int *fds, int nfds, uint32_t want)
{
	union cmsg_fds cm;
	uint8_t reply[RDP_HDR_SIZE + BATCH * RDP_STATUS_SIZE];
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	if (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0)
		return -errno;
	ssize_t n = recv(sock, reply, sizeof(reply), 0);
	if (n < 0)
		return -errno;
	if ((size_t)n != RDP_HDR_SIZE + want * RDP_STATUS_SIZE)
		return -EPROTO;
	for (uint32_t i = 0; i < want; i++)
		if (rdp_le32(reply + RDP_HDR_SIZE + i * RDP_STATUS_SIZE) != 0)
			return -EIO;
	return 0;
}

/* fds registered per second through the floor, 'batch' at a time. */
static double floor_rate(int sock, const int *fds, int batch, int iters)
{
	static uint8_t add[RDP_MSG_MAX], del[RDP_MSG_MAX];
	struct rdp_add_entry e[BATCH];
	uint64_t tok[BATCH];
	for (int i = 0; i < batch; i++) {
		e[i] = (struct rdp_add_entry){ .token = (uint64_t)i, .interest = RDP_INTEREST_READABLE };
		tok[i] = (uint64_t)i;
	}
	uint64_t t0 = bench_now_ns();
	for (int it = 0; it < iters; it++) {
		size_t al = rdp_encode_add(add, sizeof(add), (uint32_t)(2 * it + 1), e, (uint32_t)batch);
		int r = floor_call(sock, add, al, fds, batch, (uint32_t)batch);
		if (r < 0)
			return r;
		size_t dl = rdp_encode_tokens(del, sizeof(del), RDP_MSG_DEL, (uint32_t)(2 * it + 2), tok,
					      (uint32_t)batch);
		r = floor_call(sock, del, dl, NULL, 0, (uint32_t)batch);
		if (r < 0)
			return r;
	}
	uint64_t t1 = bench_now_ns();
	return (double)batch * iters * 1e9 / (double)(t1 - t0);
}

/* fds registered per second through readyd, 'batch' at a time. */
static double readyd_rate(rd_client *c, const int *fds, int batch, int iters)
{
	struct rd_entry e[BATCH];
	uint64_t t0 = bench_now_ns();
	for (int it = 0; it < iters; it++) {
		for (int i = 0; i < batch; i++)
			e[i] = (struct rd_entry){ .fd = fds[i], .token = (uint64_t)i,
						  .interest = RD_READABLE, .flags = RD_EDGE };
		int r = batch == 1 ? rd_add(c, fds[0], 0, RD_READABLE, RD_EDGE) : rd_add_batch(c, e, (size_t)batch);
		if (r != (batch == 1 ? 0 : batch))
			return r < 0 ? r : -EIO;
		r = batch == 1 ? rd_delete(c, 0) : rd_delete_batch(c, e, (size_t)batch);
		if (r != (batch == 1 ? 0 : batch))
			return r < 0 ? r : -EIO;
	}
	uint64_t t1 = bench_now_ns();
	return (double)batch * iters * 1e9 / (double)(t1 - t0);
}

/* One side of the handoff scenario, set up fresh for one phase: a floor server of its
 * own (forked, over a new socketpair), or a new connection to readyd. */
struct handoff_side {
	bool floor;
	pid_t pid;   /* the floor server */
	int sock;    /* our end of its socketpair */
	rd_client *c;
};

static int side_open(struct handoff_side *h, bool floor, struct bench_daemon *d)
{
	*h = (struct handoff_side){ .floor = floor, .sock = -1 };
	if (!floor)
		return rd_open(&h->c, d->sock);
	int sv[2], rp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	if (pipe2(rp, O_CLOEXEC) < 0) {
		int r = -errno;
		close(sv[0]);
		close(sv[1]);
		return r;
	}
	struct floor_arg fa = { .sock = sv[1], .ready_fd = rp[1] };
	h->pid = bench_fork(floor_server, &fa);
	/* Only the server holds its end: if it dies, our receive sees end of stream. */
	close(sv[1]);
	close(rp[1]);
	h->sock = sv[0];
	/* And a receive never waits more than 10 s in any case. */
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(h->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	int ok = h->pid > 0 ? bench_wait_byte(rp[0], 10000) : -ECHILD;
	close(rp[0]);
	return ok == 0 ? 0 : -ECHILD;
}

static void side_close(struct handoff_side *h)
{
	rd_close(h->c);
	if (h->sock >= 0)
		close(h->sock);
	if (h->pid > 0)
		bench_stop_pid(h->pid, SIGKILL);
	*h = (struct handoff_side){ .sock = -1 };
}

static double side_rate(struct handoff_side *h, const int *fds, int batch, int iters)
{
	return h->floor ? floor_rate(h->sock, fds, batch, iters) : readyd_rate(h->c, fds, batch, iters);
}

int bench_handoff(struct bench_run *run, struct bench_daemon *d)
{
	const struct bench_scale *sc = &run->o->sc;
	int nr = sc->reps < 64 ? sc->reps : 64;
	int chunks = sc->chunks > 0 ? sc->chunks : 1;
	int iters = sc->handoff_iters / chunks > 0 ? sc->handoff_iters / chunks : 1;
	int singles = sc->handoff_single / chunks > 0 ? sc->handoff_single / chunks : 1;
	int fds[BATCH], r = 0;
	double rd[2][64], fl[2][64], cpu[2] = { 0, 0 };

	for (int i = 0; i < BATCH; i++)
		fds[i] = -1;
	for (int i = 0; i < BATCH; i++)
		if ((fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
			r = -errno;
			goto out;
		}
	/* Each repetition: 'chunks' phases of each side, alternating, the order rotated,
	 * each with a fresh floor server or a fresh connection (as the other scenarios do,
	 * so that no single placement of the processes decides the run). A repetition's
	 * rate is its fds over its time. */
	for (int rep = 0; rep < nr; rep++) {
		double secs[2][2] = { { 0 } }; /* [floor][batched or single] */
		for (int ch = 0; ch < chunks; ch++)
			for (int k = 0; k < 2; k++) {
				bool do_floor = (rep + ch + k) % 2 == 1;
				struct handoff_side h;
				r = side_open(&h, do_floor, d);
				if (r < 0 || side_rate(&h, fds, BATCH, 2) < 0) { /* warm up */
					side_close(&h);
					r = r < 0 ? r : -EIO;
					goto fail;
				}
				pid_t srv = do_floor ? h.pid : d->pid;
				int64_t c0 = bench_cpu_ns(srv);
				double v1 = side_rate(&h, fds, BATCH, iters);
				cpu[do_floor] += (double)(bench_cpu_ns(srv) - c0);
				double v2 = v1 < 0 ? v1 : side_rate(&h, fds, 1, singles);
				side_close(&h);
				if (v1 < 0 || v2 < 0) {
					r = (int)(v1 < 0 ? v1 : v2);
					goto fail;
				}
				secs[do_floor][0] += (double)BATCH * iters / v1;
				secs[do_floor][1] += (double)singles / v2;
			}
		for (int m = 0; m < 2; m++) {
			double (*dst)[64] = m ? fl : rd;
			dst[0][rep] = (double)BATCH * iters * chunks / secs[m][0];
			dst[1][rep] = (double)singles * chunks / secs[m][1];
		}
	}
	struct bench_result *x = bench_add(run, "handoff_rate", "fds/s", true, "scm_rights+epoll_ctl");
	x->readyd = bench_median(rd[0], nr);
	x->baseline = bench_median(fl[0], nr);
	x->reps = nr;
	double nfd = (double)nr * chunks * iters * BATCH;
	snprintf(x->note, sizeof(x->note),
		 "ADD of %d fds, reply awaited, then DEL of %d; %d times per repetition in %d phases "
		 "of each, each with a fresh server or connection; server CPU ns per fd: readyd %.0f, "
		 "floor %.0f", BATCH, BATCH, iters * chunks, chunks, cpu[0] / nfd, cpu[1] / nfd);
	x = bench_add(run, "handoff_rate_single", "fds/s", true, "scm_rights+epoll_ctl");
	x->readyd = bench_median(rd[1], nr);
	x->baseline = bench_median(fl[1], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note), "extra row: rd_add then rd_delete of one fd; %d times per repetition",
		 singles * chunks);
	r = 0;
	goto out;
fail:
	fprintf(stderr, "readyd-bench: handoff: %s\n", strerror(-r));
out:
	for (int i = 0; i < BATCH; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return r;
}

long bench_profile_handoff(struct bench_opts *o, struct bench_daemon *d, long iters)
{
	(void)o;
	int fds[BATCH];
	rd_client *c = NULL;
	long r = 0;
	for (int i = 0; i < BATCH; i++)
		fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	r = rd_open(&c, d->sock);
	if (r == 0 && iters > 0) {
		double v = readyd_rate(c, fds, BATCH, (int)iters);
		r = v < 0 ? (long)v : iters * BATCH;
	}
	rd_close(c);
	for (int i = 0; i < BATCH; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return r;
}
