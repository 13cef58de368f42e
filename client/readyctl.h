/* What readyctl's command files share. */
#ifndef READYD_READYCTL_H
#define READYD_READYCTL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "readyd.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

struct top_opts {
	long iterations; /* refreshes before exiting; 0: until q or a signal */
	double delay;    /* seconds between refreshes */
	bool json;       /* one JSON object per refresh instead of the table */
};

/* A command name as a terminal may show it: control characters become '?', as any
 * process chooses its own name. dst gets at most cap - 1 bytes and a NUL. */
void readyctl_printable(char *dst, size_t cap, const char *src);

/* One control-plane request on c (req is taken): the answer when it says "ok", else NULL
 * after saying why on stderr, with *rc set. With 'print', every answer is printed too. */
json_t *readyctl_ask(rd_client *c, json_t *req, bool print, int *rc);

/* Every page of the "clients" command, the pages' lists joined into the first answer's
 * "clients". With 'print', each page is printed as it comes. */
json_t *readyctl_clients(rd_client *c, bool print, int *rc);

/* readyctl top: the live view of clients by event rate (readyctl_top.c). Returns an exit
 * status. */
int readyctl_top(rd_client *c, const struct top_opts *o);

#endif
