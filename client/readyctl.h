/* What readyctl's command files share. */
#ifndef READYD_READYCTL_H
#define READYD_READYCTL_H

#include <stdbool.h>

#include "readyd.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

struct top_opts {
	long iterations; /* refreshes before exiting; 0: until q or a signal */
	double delay;    /* seconds between refreshes */
	bool json;       /* one JSON object per refresh instead of the table */
};

/* readyctl top: the live view of clients by event rate (readyctl_top.c). Returns an exit
 * status. */
int readyctl_top(rd_client *c, const struct top_opts *o);

#endif
