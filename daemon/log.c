/* stderr logging with levels and journal priority prefixes (see log.h). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int max_level = RDD_LOG_INFO;
static bool to_journal;

static const char *const names[] = {
	[RDD_LOG_ERR] = "err",   [RDD_LOG_WARNING] = "warning", [RDD_LOG_NOTICE] = "notice",
	[RDD_LOG_INFO] = "info", [RDD_LOG_DEBUG] = "debug",
};

/* JOURNAL_STREAM is "DEV:INO" of the stream systemd connected to stderr; it only counts
 * if stderr is still that stream (we may have been started from a shell under it). */
void rdd_log_init(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	struct stat st;
	unsigned long long dev, ino;

	to_journal = false;
	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return;
	to_journal = (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void rdd_log_set_level(int level)
{
	max_level = level;
}

int rdd_log_get_level(void)
{
	return max_level;
}

int rdd_log_parse_level(const char *s)
{
	for (int i = RDD_LOG_ERR; i <= RDD_LOG_DEBUG; i++)
		if (strcmp(s, names[i]) == 0 || (s[0] == '0' + i && s[1] == '\0'))
			return i;
	if (strcmp(s, "error") == 0)
		return RDD_LOG_ERR;
	return -EINVAL;
}

const char *rdd_log_level_name(int level)
{
	if (level < RDD_LOG_ERR || level > RDD_LOG_DEBUG)
		return "?";
	return names[level];
}

void rdd_log(int level, const char *fmt, ...)
{
	char line[1024];
	int n;
	va_list ap;

	if (level > max_level)
		return;
	int saved = errno;
	if (to_journal)
		n = snprintf(line, sizeof(line), "<%d>", level);
	else
		n = snprintf(line, sizeof(line), "readyd: %s: ", rdd_log_level_name(level));
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = strlen(line);
	line[len++] = '\n';
	/* One write per line, so lines from a daemon and its tests do not interleave. */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
	errno = saved;
}
