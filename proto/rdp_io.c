/* sendmsg/recvmsg with SCM_RIGHTS for readyd messages. Every fd that arrives is either
 * handed to the caller in rdp_rx or closed here; none is left unowned. */
#include "rdp_io.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

union cmsg_space {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int) * RDP_FDS_MAX)];
};

int rdp_recv(int sock, void *buf, size_t cap, struct rdp_rx *rx, bool nonblock)
{
	union cmsg_space cm;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = cm.buf,
		.msg_controllen = sizeof(cm.buf),
	};
	int flags = MSG_CMSG_CLOEXEC | MSG_TRUNC | (nonblock ? MSG_DONTWAIT : 0);

	rx->nfds = 0;
	rx->truncated = false;
	rx->ctruncated = false;
	ssize_t n;
	do
		n = recvmsg(sock, &mh, flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (rx->nfds < RDP_FDS_MAX)
				rx->fds[rx->nfds++] = fd;
			else
				close(fd);
		}
	}
	rx->len = (size_t)n;
	rx->truncated = (mh.msg_flags & MSG_TRUNC) != 0;
	rx->ctruncated = (mh.msg_flags & MSG_CTRUNC) != 0;
	return n == 0 && rx->nfds == 0 ? 0 : 1;
}

int rdp_recv_nofds(int sock, void *buf, size_t cap, struct rdp_rx *rx, bool nonblock)
{
	ssize_t n;

	/* recv, not recvmsg: no msghdr or iovec to copy in and out on the path of every
	 * EVENTS packet. MSG_TRUNC makes a SEQPACKET socket return the packet's real length,
	 * so truncation still shows. */
	rx->nfds = 0;
	rx->ctruncated = false;
	do
		n = recv(sock, buf, cap, MSG_TRUNC | (nonblock ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	rx->len = (size_t)n;
	rx->truncated = (size_t)n > cap;
	return n == 0 ? 0 : 1;
}

int rdp_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, bool nonblock)
{
	union cmsg_space cm;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (nfds > RDP_FDS_MAX)
		return -EINVAL;
	if (nfds > 0) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	int flags = MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0);
	ssize_t n;
	/* Without fds, send: no msghdr to copy in, on the path of every EVENTS packet. */
	do
		n = nfds > 0 ? sendmsg(sock, &mh, flags) : send(sock, buf, len, flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return 0;
}

void rdp_rx_close_fds(struct rdp_rx *rx)
{
	for (size_t i = 0; i < rx->nfds; i++)
		close(rx->fds[i]);
	rx->nfds = 0;
}
