/* The allocation countdown of a fault-injection build (see fault.h). */
#ifdef RDD_FAULT_INJECTION
#define RDD_FAULT_IMPL
#include "fault.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static long countdown;

static int should_fail(void)
{
	if (countdown > 0 && --countdown == 0) {
		errno = ENOMEM;
		return 1;
	}
	return 0;
}

void *rdd_fault_malloc(size_t n)
{
	return should_fail() ? NULL : malloc(n);
}

void *rdd_fault_calloc(size_t n, size_t size)
{
	return should_fail() ? NULL : calloc(n, size);
}

void *rdd_fault_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : realloc(p, n);
}

char *rdd_fault_strdup(const char *s)
{
	return should_fail() ? NULL : strdup(s);
}

void rdd_fault_arm(long n)
{
	countdown = n > 0 ? n : 0;
}

void rdd_fault_init(void)
{
	json_set_alloc_funcs(rdd_fault_malloc, free);
}
#else
/* An empty translation unit is not ISO C. */
typedef int rdd_fault_unused;
#endif
