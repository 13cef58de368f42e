/* Talking to the service manager with sd_notify(3): READY=1 once serving, STATUS= with
 * clients, registrations and events per second, WATCHDOG=1 at half of WATCHDOG_USEC,
 * STOPPING=1 on the way out. One timerfd in the loop drives STATUS and WATCHDOG, so a
 * stuck loop stops the keep-alives and trips the watchdog. Without NOTIFY_SOCKET there
 * is no timer and every call here does nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "rdd.h"

#define STATUS_PERIOD_USEC 1000000u

static char last_status[160];

static bool enabled(void)
{
	const char *e = getenv("NOTIFY_SOCKET");
	return e && *e;
}

int rdd_notify_init(struct rdd *d)
{
	d->timer_fd = -1;
	if (!enabled())
		return 0;
	uint64_t wd = 0;
	if (sd_watchdog_enabled(0, &wd) > 0 && wd > 0)
		d->watchdog_usec = wd;
	uint64_t period = STATUS_PERIOD_USEC;
	if (d->watchdog_usec && d->watchdog_usec / 2 < period)
		period = d->watchdog_usec / 2;
	if (period == 0)
		period = 1;

	int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct itimerspec its = {
		.it_interval = { .tv_sec = (time_t)(period / 1000000u),
				 .tv_nsec = (long)(period % 1000000u) * 1000 },
	};
	its.it_value = its.it_interval;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = rdd_data(RDD_TAG_TIMER, 0, 0) };
	if (timerfd_settime(fd, 0, &its, NULL) < 0 || epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	d->timer_fd = fd;
	d->nfds++;
	d->last_status_usec = rdd_now_usec(CLOCK_MONOTONIC);
	d->last_status_events = d->events_delivered; /* restored by an upgrade: a total */
	if (d->watchdog_usec)
		log_info("watchdog: keep-alive every %llu ms",
			 (unsigned long long)(period / 1000));
	return 0;
}

static void format_status(struct rdd *d, char *buf, size_t len, uint64_t rate)
{
	snprintf(buf, len, "Serving %u client%s, %u registration%s, %llu events/s", d->nclients,
		 d->nclients == 1 ? "" : "s", d->slab.used, d->slab.used == 1 ? "" : "s",
		 (unsigned long long)rate);
}

void rdd_notify_ready(struct rdd *d)
{
	if (!enabled())
		return;
	format_status(d, last_status, sizeof(last_status), 0);
	int r = sd_notifyf(0, "READY=1\nSTATUS=%s", last_status);
	if (r < 0)
		log_warning("sd_notify READY: %s", strerror(-r));
}

void rdd_notify_reloading(struct rdd *d)
{
	(void)d;
	if (enabled())
		(void)sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading configuration",
				 (unsigned long long)rdd_now_usec(CLOCK_MONOTONIC));
}

void rdd_notify_tick(struct rdd *d)
{
	uint64_t expirations;
	while (read(d->timer_fd, &expirations, sizeof(expirations)) > 0)
		;
	if (d->watchdog_usec)
		(void)sd_notify(0, "WATCHDOG=1");

	uint64_t now = rdd_now_usec(CLOCK_MONOTONIC);
	uint64_t dt = now - d->last_status_usec;
	if (dt < STATUS_PERIOD_USEC)
		return;
	uint64_t rate = (d->events_delivered - d->last_status_events) * 1000000u / dt;
	d->last_status_usec = now;
	d->last_status_events = d->events_delivered;
	char status[sizeof(last_status)];
	format_status(d, status, sizeof(status), rate);
	/* Only changes reach the manager: an idle daemon stays quiet. */
	if (strcmp(status, last_status) == 0)
		return;
	memcpy(last_status, status, sizeof(status));
	(void)sd_notifyf(0, "STATUS=%s", status);
}

void rdd_notify_stopping(struct rdd *d)
{
	(void)d;
	if (enabled())
		(void)sd_notify(0, "STOPPING=1\nSTATUS=Shutting down");
}

#define FDNAME_PREFIX "rdc-"

void rdd_notify_fdstore(struct rdd *d, struct rdd_client *c)
{
	(void)d;
	if (!enabled())
		return;
	char msg[64];
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=" FDNAME_PREFIX "%llu",
		 (unsigned long long)c->id);
	int r = sd_pid_notify_with_fds(0, 0, msg, &c->fd, 1);
	if (r > 0)
		c->stored = true;
	else if (r < 0)
		log_debug("FDSTORE client %llu: %s", (unsigned long long)c->id, strerror(-r));
}

void rdd_notify_fdstore_remove(struct rdd *d, struct rdd_client *c)
{
	(void)d;
	if (!c->stored || !enabled())
		return;
	(void)sd_notifyf(0, "FDSTOREREMOVE=1\nFDNAME=" FDNAME_PREFIX "%llu", (unsigned long long)c->id);
	c->stored = false;
}
