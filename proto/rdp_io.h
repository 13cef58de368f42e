/* Moving readyd messages and their fds over an AF_UNIX SOCK_SEQPACKET socket.
 * The only part of proto/ that makes syscalls: sendmsg and recvmsg. */
#ifndef READYD_PROTO_RDP_IO_H
#define READYD_PROTO_RDP_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define RDP_FDS_MAX 253 /* SCM_MAX_FD: the kernel's limit per message */

struct rdp_rx {
	size_t len;            /* bytes of the message (its real size when 'truncated') */
	int fds[RDP_FDS_MAX];  /* received fds, close-on-exec; the caller owns them */
	size_t nfds;
	bool truncated;        /* MSG_TRUNC: the message was larger than the buffer */
	bool ctruncated;       /* MSG_CTRUNC: fds were lost; any that arrived are in fds[] */
};

/* Receive one message into buf. Returns 1 with a message, 0 at end of stream (or an
 * empty message: SEQPACKET cannot tell them apart), or -errno (-EAGAIN when none is
 * waiting and 'nonblock'). fds arrive with MSG_CMSG_CLOEXEC. */
int rdp_recv(int sock, void *buf, size_t cap, struct rdp_rx *rx, bool nonblock);

/* The same for a peer that must send no fds (the daemon, to a client), with recv: no
 * control buffer, so any fd sent anyway is closed by the kernel on arrival (nfds and
 * ctruncated stay 0). truncated is set, and len is the packet's real length, when it
 * did not fit in cap. */
int rdp_recv_nofds(int sock, void *buf, size_t cap, struct rdp_rx *rx, bool nonblock);

/* Send one message with optional fds, MSG_NOSIGNAL, and MSG_DONTWAIT when 'nonblock'.
 * Returns 0 or -errno (-EAGAIN: nothing was sent, try again on EPOLLOUT). */
int rdp_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, bool nonblock);

/* Close every fd in rx and forget them. */
void rdp_rx_close_fds(struct rdp_rx *rx);

#endif
