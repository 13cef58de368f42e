/* Leveled logging to stderr. When stderr is the journal (JOURNAL_STREAM names it), each
 * line starts with an sd-daemon "<N>" priority prefix instead of a level word. */
#ifndef READYD_DAEMON_LOG_H
#define READYD_DAEMON_LOG_H

/* syslog priorities */
enum rdd_log_level {
	RDD_LOG_ERR = 3,
	RDD_LOG_WARNING = 4,
	RDD_LOG_NOTICE = 5,
	RDD_LOG_INFO = 6,
	RDD_LOG_DEBUG = 7,
};

void rdd_log_init(void);
void rdd_log_set_level(int level);
int rdd_log_get_level(void);
/* Parse "err", "warning", "notice", "info", "debug" (or 3..7). Returns the level or -EINVAL. */
int rdd_log_parse_level(const char *s);
const char *rdd_log_level_name(int level);

__attribute__((format(printf, 2, 3))) void rdd_log(int level, const char *fmt, ...);

#define log_err(...) rdd_log(RDD_LOG_ERR, __VA_ARGS__)
#define log_warning(...) rdd_log(RDD_LOG_WARNING, __VA_ARGS__)
#define log_notice(...) rdd_log(RDD_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) rdd_log(RDD_LOG_INFO, __VA_ARGS__)
#define log_debug(...) rdd_log(RDD_LOG_DEBUG, __VA_ARGS__)

#endif
