/* Allocation-failure injection, for a test build only (make check-faults compiles the
 * daemon with -DRDD_FAULT_INJECTION). There, every allocation of the daemon (its own and
 * jansson's) goes through a countdown that a control command arms: the Nth allocation
 * from then on fails, once. In a normal build this header defines nothing. */
#ifndef READYD_DAEMON_FAULT_H
#define READYD_DAEMON_FAULT_H

#ifdef RDD_FAULT_INJECTION
#include <stdlib.h>
#include <string.h>

void *rdd_fault_malloc(size_t n);
void *rdd_fault_calloc(size_t n, size_t size);
void *rdd_fault_realloc(void *p, size_t n);
char *rdd_fault_strdup(const char *s);
/* Fail the nth allocation from now (n >= 1), once; 0 disarms. */
void rdd_fault_arm(long n);
/* Route jansson's allocations through the countdown too. */
void rdd_fault_init(void);

#ifndef RDD_FAULT_IMPL /* fault.c itself calls the real ones */
#define malloc(n) rdd_fault_malloc(n)
#define calloc(n, s) rdd_fault_calloc(n, s)
#define realloc(p, n) rdd_fault_realloc(p, n)
#define strdup(s) rdd_fault_strdup(s)
#endif
#endif

#endif
