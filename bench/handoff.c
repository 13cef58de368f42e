/* handoff_rate: fds registered per second. readyd: rd_add_batch of 253 fds (one ADD,
 * its reply awaited), then rd_delete_batch of the same 253. The floor: the same ADD and
 * DEL messages, byte for byte, to a bare server that receives the fds with SCM_RIGHTS,
 * epoll_ctl ADDs them, replies, then on DEL epoll_ctl DELs and closes them and replies.
 * handoff_rate_single does the same one fd at a time. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
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

int bench_handoff(struct bench_run *run, struct bench_daemon *d)
{
	const struct bench_scale *sc = &run->o->sc;
	int nr = sc->reps < 64 ? sc->reps : 64;
	int fds[BATCH], sv[2] = { -1, -1 }, rp[2] = { -1, -1 }, r = 0;
	double rd[2][64], fl[2][64], cpu[2] = { 0, 0 };
	rd_client *c = NULL;
	pid_t pid = 0;

	for (int i = 0; i < BATCH; i++)
		fds[i] = -1;
	for (int i = 0; i < BATCH; i++)
		if ((fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
			r = -errno;
			goto out;
		}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0 || pipe(rp) < 0) {
		r = -errno;
		goto out;
	}
	struct floor_arg fa = { .sock = sv[1], .ready_fd = rp[1] };
	pid = bench_fork(floor_server, &fa);
	if (pid < 0 || bench_wait_byte(rp[0], 10000) != 0) {
		r = -ECHILD;
		goto out;
	}
	r = rd_open(&c, d->sock);
	if (r < 0)
		goto out;
	/* Warm both paths up. */
	if (readyd_rate(c, fds, BATCH, 2) < 0 || floor_rate(sv[0], fds, BATCH, 2) < 0) {
		r = -EIO;
		goto out;
	}
	for (int rep = 0; rep < nr; rep++) {
		for (int k = 0; k < 2; k++) {
			bool fl_first = rep % 2;
			bool do_floor = fl_first ? k == 0 : k == 1;
			pid_t srv = do_floor ? pid : d->pid;
			int64_t c0 = bench_cpu_ns(srv);
			double v1 = do_floor ? floor_rate(sv[0], fds, BATCH, sc->handoff_iters)
					     : readyd_rate(c, fds, BATCH, sc->handoff_iters);
			cpu[do_floor] += (double)(bench_cpu_ns(srv) - c0);
			double v2 = do_floor ? floor_rate(sv[0], fds, 1, sc->handoff_single)
					     : readyd_rate(c, fds, 1, sc->handoff_single);
			if (v1 < 0 || v2 < 0) {
				r = (int)(v1 < 0 ? v1 : v2);
				fprintf(stderr, "readyd-bench: handoff %s: %s\n", do_floor ? "floor" : "readyd",
					strerror(-r));
				goto out;
			}
			(do_floor ? fl : rd)[0][rep] = v1;
			(do_floor ? fl : rd)[1][rep] = v2;
		}
	}
	struct bench_result *x = bench_add(run, "handoff_rate", "fds/s", true, "scm_rights+epoll_ctl");
	x->readyd = bench_median(rd[0], nr);
	x->baseline = bench_median(fl[0], nr);
	x->reps = nr;
	double nfd = (double)nr * sc->handoff_iters * BATCH;
	snprintf(x->note, sizeof(x->note),
		 "ADD of %d fds, reply awaited, then DEL of %d; %d times per repetition; server CPU "
		 "ns per fd: readyd %.0f, floor %.0f", BATCH, BATCH, sc->handoff_iters, cpu[0] / nfd,
		 cpu[1] / nfd);
	x = bench_add(run, "handoff_rate_single", "fds/s", true, "scm_rights+epoll_ctl");
	x->readyd = bench_median(rd[1], nr);
	x->baseline = bench_median(fl[1], nr);
	x->reps = nr;
	snprintf(x->note, sizeof(x->note), "extra row: rd_add then rd_delete of one fd; %d times per repetition",
		 sc->handoff_single);
	r = 0;
out:
	rd_close(c);
	if (pid > 0)
		bench_stop_pid(pid, SIGKILL);
	for (int i = 0; i < 2; i++) {
		if (sv[i] >= 0)
			close(sv[i]);
		if (rp[i] >= 0)
			close(rp[i]);
	}
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
