/* fd accounting shared by every test: count a process's open fds, and a cmocka
 * setup/teardown pair that fails a test which leaves an fd open. */
#ifndef READYD_TESTS_FDCHECK_H
#define READYD_TESTS_FDCHECK_H

#include <sys/types.h>

/* Open fds of a process (/proc/PID/fd), not counting the one used to count. */
int rdt_count_fds(pid_t pid);
int rdt_fd_setup(void **state);
int rdt_fd_teardown(void **state);

#endif
