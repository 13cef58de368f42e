/* Links against build/lib/libreadyd.so with -lreadyd, as a user would: proves the shared
 * library exports the API and that it runs. Exits 0 on success. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "readyd.h"

int main(void)
{
	char path[108];
	rd_client *c;
	if (rd_default_socket_path(path, sizeof(path)) <= 0)
		return 1;
	/* No daemon there: a clean -ENOENT, not a crash or a leak. */
	int r = rd_open(&c, "/nonexistent/readyd.sock");
	if (r != -ENOENT) {
		fprintf(stderr, "rd_open: %s\n", strerror(-r));
		return 1;
	}
	return 0;
}
