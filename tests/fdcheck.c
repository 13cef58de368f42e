/* fd accounting for tests (see fdcheck.h). */
#include "fdcheck.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int rdt_count_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -errno;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return pid == getpid() ? n - 1 : n;
}

static int fds_before;

int rdt_fd_setup(void **state)
{
	(void)state;
	fds_before = rdt_count_fds(getpid());
	return fds_before < 0 ? -1 : 0;
}

int rdt_fd_teardown(void **state)
{
	(void)state;
	int now = rdt_count_fds(getpid());
	if (now != fds_before) {
		fprintf(stderr, "fd leak: %d open before the test, %d after\n", fds_before, now);
		return -1;
	}
	return 0;
}
