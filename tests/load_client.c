/* load-client: a test driver for tests/systemd-user.sh. It opens N connections by path,
 * registers M pipes on each, prints "ready", then obeys commands on stdin, one a line:
 *   write   make every registered pipe readable (one byte each)
 *   check   wait until every token of every connection has been reported (bounded),
 *           check each connection still answers, and print
 *           "ok clients=N regs=M reconnected=K" (K: connections whose socket changed),
 *           or "FAIL reason"; then exit.
 * Exit status: 0 after "ok", 1 otherwise. Every wait is bounded. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "readyd.h"

#define MAX_CLIENTS 256
#define WAIT_MS 20000

static int fail(const char *what, int r)
{
	printf("FAIL %s: %s\n", what, strerror(r < 0 ? -r : r));
	fflush(stdout);
	return 1;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: load-client SOCKET CLIENTS REGISTRATIONS\n");
		return 2;
	}
	const char *sock = argv[1];
	int nc = atoi(argv[2]), nr = atoi(argv[3]);
	if (nc < 1 || nc > MAX_CLIENTS || nr < 1 || nr > 1000)
		return 2;
	static rd_client *c[MAX_CLIENTS];
	static ino_t ino[MAX_CLIENTS];
	int (*p)[2] = calloc((size_t)nc * (size_t)nr, sizeof(*p));
	struct rd_entry *e = calloc((size_t)nr, sizeof(*e));
	if (!p || !e)
		return fail("calloc", ENOMEM);

	for (int i = 0; i < nc; i++) {
		int r = rd_open(&c[i], sock);
		if (r < 0)
			return fail("rd_open", r);
		for (int k = 0; k < nr; k++) {
			int *pp = p[i * nr + k];
			if (pipe2(pp, O_NONBLOCK | O_CLOEXEC) < 0)
				return fail("pipe2", errno);
			e[k] = (struct rd_entry){ .fd = pp[0], .token = (uint64_t)k,
						  .interest = RD_READABLE, .flags = k % 2 ? RD_ONESHOT : 0 };
		}
		r = rd_add_batch(c[i], e, (size_t)nr);
		if (r != nr)
			return fail("rd_add_batch", r < 0 ? r : EIO);
		struct stat st;
		fstat(rd_fd(c[i]), &st);
		ino[i] = st.st_ino;
	}
	printf("ready\n");
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof(line), stdin)) {
		if (strncmp(line, "write", 5) == 0) {
			for (int i = 0; i < nc * nr; i++)
				if (write(p[i][1], "x", 1) != 1)
					return fail("write", errno);
			continue;
		}
		if (strncmp(line, "check", 5) != 0)
			continue;
		bool *seen = calloc((size_t)nr, sizeof(bool));
		struct rd_event ev[256];
		int reconnected = 0;
		for (int i = 0; i < nc; i++) {
			memset(seen, 0, (size_t)nr);
			int distinct = 0;
			long long deadline = now_ms() + WAIT_MS;
			while (distinct < nr && now_ms() < deadline) {
				int n = rd_wait(c[i], ev, 256, 1000);
				if (n < 0)
					return fail("rd_wait", n);
				for (int k = 0; k < n; k++)
					if (ev[k].token < (uint64_t)nr && !seen[ev[k].token]) {
						seen[ev[k].token] = true;
						distinct++;
					}
			}
			if (distinct < nr) {
				printf("FAIL client %d: %d of %d tokens reported\n", i, distinct, nr);
				return 1;
			}
			/* Every registration is live: its delete succeeds. */
			for (int k = 0; k < nr; k++) {
				int r = rd_delete(c[i], (uint64_t)k);
				if (r < 0)
					return fail("rd_delete", r);
			}
			struct stat st;
			fstat(rd_fd(c[i]), &st);
			reconnected += st.st_ino != ino[i];
		}
		printf("ok clients=%d regs=%d reconnected=%d\n", nc, nr, reconnected);
		fflush(stdout);
		return 0;
	}
	printf("FAIL no check command\n");
	return 1;
}
