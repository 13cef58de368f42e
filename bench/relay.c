/* The bare relay: the floor for any readiness-as-a-service design. One epoll, fds
 * watched edge-triggered, every event forwarded as readyd's 16-byte EVENTS record
 * (u64 token, u32 tick, u32 ready, little-endian) over SEQPACKET, one packet per client
 * per epoll_wait. No header, no queue, no coalescing beyond the kernel's, no budget. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "../proto/rdp.h"
#include "bench.h"

/* As many events per epoll_wait as one readyd EVENTS packet carries (overridable, to
 * see what the batch size alone is worth). */
#ifndef RELAY_BATCH
#define RELAY_BATCH RDP_EVENTS_MAX
#endif

int relay_watch(int epfd, int fd, uint32_t client, uint32_t token)
{
	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
		.data.u64 = (uint64_t)client << 32 | token,
	};
	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int relay_run(void *arg)
{
	const struct relay_cfg *cfg = arg;
	static struct epoll_event evs[RELAY_BATCH];
	uint8_t **buf = calloc((size_t)cfg->nsocks, sizeof(*buf));
	uint32_t *len = calloc((size_t)cfg->nsocks, sizeof(*len));
	int *dirty = calloc((size_t)cfg->nsocks, sizeof(*dirty));
	uint32_t tick = 0;

	if (!buf || !len || !dirty)
		return ENOMEM;
	for (int i = 0; i < cfg->nsocks; i++) {
		buf[i] = malloc((size_t)RELAY_BATCH * RDP_EVENT_SIZE);
		if (!buf[i])
			return ENOMEM;
	}
	bench_say(cfg->ready_fd, 0);
	for (;;) {
		int n = epoll_wait(cfg->epfd, evs, RELAY_BATCH, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		int ndirty = 0;
		for (int i = 0; i < n; i++) {
			uint32_t c = (uint32_t)(evs[i].data.u64 >> 32);
			if (c >= (uint32_t)cfg->nsocks)
				continue;
			uint8_t *p = buf[c] + (size_t)len[c] * RDP_EVENT_SIZE;
			rdp_st64(p, (uint32_t)evs[i].data.u64);
			rdp_st32(p + 8, ++tick);
			rdp_st32(p + 12, evs[i].events);
			if (len[c]++ == 0)
				dirty[ndirty++] = (int)c;
		}
		for (int i = 0; i < ndirty; i++) {
			int c = dirty[i];
			while (send(cfg->socks[c], buf[c], (size_t)len[c] * RDP_EVENT_SIZE, MSG_NOSIGNAL) < 0)
				if (errno != EINTR)
					return errno;
			len[c] = 0;
		}
	}
}
