/* echo-server: a TCP echo server whose every readiness wait goes through readyd.
 *
 *   echo-server [--socket PATH] [--port PORT]
 *
 * Listens on 127.0.0.1:PORT (default 7777; 0 picks a free port) and prints the port it
 * got. The listening socket and every connection are registered with readyd in edge
 * mode; the server reads and writes until EAGAIN on each event, and asks for writable
 * readiness only while it has bytes it could not write yet. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "readyd.h"

#define MAX_CONNS 1024
#define LISTENER UINT64_MAX

struct conn {
	int fd;
	char buf[16384]; /* bytes read but not yet echoed */
	size_t len;
};

static struct conn *conns[MAX_CONNS];

static void drop(rd_client *rd, uint64_t id)
{
	struct conn *c = conns[id];
	rd_delete(rd, id); /* the peer sees EOF only once readyd lets go of its copy too */
	close(c->fd);
	free(c);
	conns[id] = NULL;
}

/* Echo what can be echoed. Returns -1 when the connection is finished. */
static int pump(rd_client *rd, uint64_t id, uint32_t ready)
{
	struct conn *c = conns[id];
	for (;;) {
		while (c->len > 0) {
			ssize_t w = send(c->fd, c->buf, c->len, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno != EAGAIN)
					return -1;
				/* Wait for writable readiness, and stop reading meanwhile. */
				return rd_modify(rd, id, RD_WRITABLE, RD_EDGE) < 0 ? -1 : 0;
			}
			memmove(c->buf, c->buf + w, c->len - (size_t)w);
			c->len -= (size_t)w;
		}
		if (ready & RD_WRITABLE) {
			if (rd_modify(rd, id, RD_READABLE, RD_EDGE) < 0)
				return -1;
			ready = RD_READABLE; /* we did not read while blocked: read now */
		}
		ssize_t n = read(c->fd, c->buf, sizeof(c->buf));
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->len = (size_t)n;
	}
}

/* Accept until the backlog is empty (EAGAIN): the listener is edge-triggered. Returns
 * false when it stopped short (out of fds, say): connections still wait, and no new
 * edge comes for them, so the caller tries again once one of ours goes. */
static bool accept_all(rd_client *rd, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
			continue;
		if (fd < 0)
			return errno == EAGAIN;
		uint64_t id = 0;
		while (id < MAX_CONNS && conns[id])
			id++;
		struct conn *c = id < MAX_CONNS ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		conns[id] = c;
		int r = rd_add(rd, fd, id, RD_READABLE, RD_EDGE);
		if (r < 0) {
			fprintf(stderr, "echo-server: rd_add: %s\n", strerror(-r));
			close(fd);
			free(c);
			conns[id] = NULL;
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "port", required_argument, NULL, 'p' },
		{ 0 },
	};
	const char *path = NULL;
	int port = 7777, o;
	while ((o = getopt_long(argc, argv, "s:p:", opts, NULL)) != -1) {
		if (o == 's')
			path = optarg;
		else if (o == 'p')
			port = atoi(optarg);
		else {
			fprintf(stderr, "usage: echo-server [--socket PATH] [--port PORT]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);

	rd_client *rd;
	int r = rd_open(&rd, path);
	if (r < 0) {
		fprintf(stderr, "echo-server: cannot reach readyd: %s\n", strerror(-r));
		return 1;
	}
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	socklen_t sl = sizeof(sa);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		perror("echo-server: listen");
		return 1;
	}
	r = rd_add(rd, lfd, LISTENER, RD_READABLE, RD_EDGE);
	if (r < 0) {
		fprintf(stderr, "echo-server: rd_add: %s\n", strerror(-r));
		return 1;
	}
	printf("echo-server: listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
	fflush(stdout);

	bool waiting = false; /* connections left in the backlog by accept_all */
	for (;;) {
		struct rd_event ev[64];
		int n = rd_wait(rd, ev, 64, -1);
		if (n < 0) {
			fprintf(stderr, "echo-server: rd_wait: %s\n", strerror(-n));
			return 1;
		}
		for (int i = 0; i < n; i++) {
			if (ev[i].token == LISTENER) {
				waiting = !accept_all(rd, lfd);
			} else if (ev[i].token < MAX_CONNS && conns[ev[i].token] &&
				   pump(rd, ev[i].token, ev[i].ready) < 0) {
				drop(rd, ev[i].token);
				if (waiting) /* a connection went: room for those left waiting */
					waiting = !accept_all(rd, lfd);
			}
		}
	}
}
