/* Crash recovery without systemd: the test plays the service manager. It owns the
 * listening socket and passes it with LISTEN_FDS, reads FDSTORE messages off its own
 * NOTIFY_SOCKET and keeps the client connections they carry, kills readyd with SIGKILL,
 * and starts a new one with the stored connections in LISTEN_FDS, as systemd does after
 * a crash. A second case kills a daemon with no fd store: clients connected by path
 * reconnect. Either way every registration comes back, every token is reported ready
 * once, and readiness that arose during the outage is seen. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../client/readyd.h"
#include "../proto/rdp.h"
#include "harness.h"

#define PATIENCE_MS 5000
#define MAX_STORED 64

static char dir_[64];

static const char *readyd_bin(void)
{
	return getenv("READYD_BIN") ? getenv("READYD_BIN") : "build/bin/readyd";
}

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir_, sizeof(dir_), "/tmp/readyd-rec-XXXXXX");
	if (!mkdtemp(dir_))
		return -1;
	return rdt_fd_setup(state);
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir_);
	if (system(cmd) != 0)
		return -1;
	return rdt_fd_teardown(state);
}

/* The service manager's side of the fd store. */
struct store {
	int notify;            /* our NOTIFY_SOCKET */
	int fds[MAX_STORED];
	char names[MAX_STORED][32];
	int n;
};

static int bind_unix(int type, const char *path)
{
	int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return s;
}

/* Read every notify message waiting (up to wait_ms for the first); apply FDSTORE and
 * FDSTOREREMOVE. Returns true when a message containing 'want' was seen. */
static bool store_pump(struct store *st, int wait_ms, const char *want)
{
	bool seen = false;
	for (int i = 0; i < 1000; i++) {
		struct pollfd p = { .fd = st->notify, .events = POLLIN };
		if (poll(&p, 1, i == 0 ? wait_ms : (seen || !want ? 0 : wait_ms)) != 1)
			break;
		char buf[512];
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * 4)];
		} cm;
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
				     .msg_controllen = sizeof(cm.b) };
		ssize_t n = recvmsg(st->notify, &mh, MSG_CMSG_CLOEXEC);
		assert_true(n >= 0);
		buf[n] = '\0';
		int fd = -1;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				memcpy(&fd, CMSG_DATA(c), sizeof(int));
		const char *name = strstr(buf, "FDNAME=");
		char nm[32] = "";
		if (name)
			sscanf(name + 7, "%31[^\n]", nm);
		if (strstr(buf, "FDSTORE=1") && fd >= 0 && st->n < MAX_STORED) {
			snprintf(st->names[st->n], sizeof(st->names[0]), "%s", nm);
			st->fds[st->n++] = fd;
		} else if (fd >= 0)
			close(fd);
		if (strstr(buf, "FDSTOREREMOVE=1"))
			for (int k = 0; k < st->n; k++)
				if (strcmp(st->names[k], nm) == 0) {
					close(st->fds[k]);
					st->fds[k] = st->fds[--st->n];
					memcpy(st->names[k], st->names[st->n], sizeof(st->names[0]));
					break;
				}
		if (want && strstr(buf, want))
			seen = true;
	}
	return seen;
}

/* As a service manager would set up: our NOTIFY_SOCKET (st->notify, for the fd store)
 * at nsock and a listening socket at sock, both in the test's directory; returns the
 * listener. sock and nsock have room for 96 bytes. */
static int managed_setup(struct store *st, char *sock, char *nsock)
{
	snprintf(sock, 96, "%s/readyd.sock", dir_);
	snprintf(nsock, 96, "%s/notify", dir_);
	*st = (struct store){ .notify = bind_unix(SOCK_DGRAM, nsock) };
	int listener = bind_unix(SOCK_SEQPACKET, sock);
	assert_int_equal(listen(listener, 128), 0);
	return listener;
}

/* Start readyd as systemd would: the listener and the stored fds in LISTEN_FDS. */
static pid_t start_managed(int listener, const struct store *st, const char *nsock)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid > 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Move everything out of the way of 3.., then into place. */
	int tmp[MAX_STORED + 1], n = 0;
	tmp[n++] = fcntl(listener, F_DUPFD, 100);
	for (int i = 0; i < st->n; i++)
		tmp[n++] = fcntl(st->fds[i], F_DUPFD, 100);
	for (int fd = 3; fd < 100; fd++)
		close(fd);
	char names[2048] = "readyd";
	for (int i = 0; i < n; i++) {
		dup2(tmp[i], 3 + i);
		close(tmp[i]);
		if (i > 0) {
			strcat(names, ":");
			strcat(names, st->names[i - 1]);
		}
	}
	char v[32];
	snprintf(v, sizeof(v), "%d", n);
	setenv("LISTEN_FDS", v, 1);
	snprintf(v, sizeof(v), "%d", (int)getpid());
	setenv("LISTEN_PID", v, 1);
	setenv("LISTEN_FDNAMES", names, 1);
	setenv("NOTIFY_SOCKET", nsock, 1);
	execl(readyd_bin(), readyd_bin(), "--log-level", "warning", (char *)NULL);
	_exit(127);
}

static void kill9(pid_t pid)
{
	kill(pid, SIGKILL);
	int ws;
	assert_int_equal(rdt_waitpid(pid, &ws, RDT_EXIT_MS), pid);
	assert_true(WIFSIGNALED(ws));
}

/* A new daemon on the dead one's path (the stale socket file is replaced), as an
 * administrator restarting it by hand would start it. */
static struct rdt_daemon restart_on_path(const struct rdt_daemon *d)
{
	struct rdt_daemon d2 = *d;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		execl(readyd_bin(), readyd_bin(), "--socket", d->sock, "--log-level", "warning",
		      (char *)NULL);
		_exit(127);
	}
	d2.pid = pid;
	return d2;
}

static void stop(pid_t pid)
{
	kill(pid, SIGTERM);
	int ws;
	assert_int_equal(rdt_waitpid(pid, &ws, RDT_EXIT_MS), pid);
	assert_true(WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);
}

/* start_managed, then wait for its READY=1. */
static pid_t managed_start(int listener, struct store *st, const char *nsock)
{
	pid_t pid = start_managed(listener, st, nsock);
	assert_true(store_pump(st, PATIENCE_MS, "READY=1"));
	return pid;
}

/* Every client has gone: each was taken out of the store. Then stop the daemon. */
static void managed_end(struct store *st, pid_t pid, int listener)
{
	for (int i = 0; i < 100 && st->n > 0; i++)
		store_pump(st, 50, NULL);
	assert_int_equal(st->n, 0);
	stop(pid);
	close(listener);
	close(st->notify);
}

enum { CLIENTS = 5, REGS = 20 };

struct load {
	rd_client *c[CLIENTS];
	int p[CLIENTS][REGS][2];
};

static void load_start(struct load *l, const char *sock)
{
	for (int c = 0; c < CLIENTS; c++) {
		assert_int_equal(rd_open(&l->c[c], sock), 0);
		struct rd_entry e[REGS];
		for (int i = 0; i < REGS; i++) {
			assert_int_equal(pipe2(l->p[c][i], O_NONBLOCK | O_CLOEXEC), 0);
			e[i] = (struct rd_entry){ .fd = l->p[c][i][0], .token = (uint64_t)(100 * c + i),
						  .interest = RD_READABLE,
						  .flags = i % 2 ? RD_ONESHOT : RD_EDGE };
		}
		assert_int_equal(rd_add_batch(l->c[c], e, REGS), REGS);
	}
}

/* After the restart every client sees each of its tokens at least once (the replay's
 * "ready once", and the readiness written during the outage), its registrations answer
 * to delete, and nothing is reported for a token it does not own. */
static void load_check(struct load *l)
{
	for (int c = 0; c < CLIENTS; c++) {
		bool seen[REGS] = { false };
		int distinct = 0;
		struct rd_event ev[64];
		while (distinct < REGS) {
			int n = rd_wait(l->c[c], ev, 64, PATIENCE_MS);
			assert_true(n > 0);
			for (int i = 0; i < n; i++) {
				uint64_t t = ev[i].token - 100 * (uint64_t)c;
				assert_true(t < REGS);
				if (!seen[t]) {
					seen[t] = true;
					distinct++;
				}
			}
		}
		/* A new edge after recovery is reported as usual. */
		char b[64];
		assert_true(read(l->p[c][0][0], b, sizeof(b)) >= 0);
		assert_int_equal(write(l->p[c][0][1], "n", 1), 1);
		bool again = false;
		for (int k = 0; k < 8 && !again; k++) {
			int n = rd_wait(l->c[c], ev, 64, PATIENCE_MS);
			assert_true(n > 0);
			for (int i = 0; i < n; i++)
				again |= ev[i].token == 100 * (uint64_t)c;
		}
		assert_true(again);
		for (int i = 0; i < REGS; i++)
			assert_int_equal(rd_delete(l->c[c], (uint64_t)(100 * c + i)), 0);
	}
}

static void load_stop(struct load *l)
{
	for (int c = 0; c < CLIENTS; c++) {
		rd_close(l->c[c]);
		for (int i = 0; i < REGS; i++) {
			close(l->p[c][i][0]);
			close(l->p[c][i][1]);
		}
	}
}

/* kill -9 under load with the connections in the fd store: no client reconnects (its
 * connection is the same socket), and every registration is live again. */
static void test_crash_with_fd_store(void **state)
{
	(void)state;
	char sock[96], nsock[96];
	struct store st;
	int listener = managed_setup(&st, sock, nsock);
	pid_t pid = managed_start(listener, &st, nsock);
	static struct load l;
	load_start(&l, sock);
	for (int i = 0; i < PATIENCE_MS / 50 && st.n < CLIENTS; i++)
		store_pump(&st, 50, NULL);
	assert_int_equal(st.n, CLIENTS);
	struct stat before;
	assert_int_equal(fstat(rd_fd(l.c[0]), &before), 0);

	kill9(pid);
	/* Readiness during the outage. */
	for (int c = 0; c < CLIENTS; c++)
		for (int i = 0; i < REGS; i++)
			assert_int_equal(write(l.p[c][i][1], "o", 1), 1);
	pid = managed_start(listener, &st, nsock);

	load_check(&l);
	struct stat after;
	assert_int_equal(fstat(rd_fd(l.c[0]), &after), 0);
	assert_int_equal(before.st_ino, after.st_ino); /* the same connection: no reconnect */
	load_stop(&l);
	managed_end(&st, pid, listener);
}

/* kill -9 of a daemon that bound its own socket, without a store: clients connected by
 * path reconnect to the new daemon and replay. */
static void test_crash_reconnect_by_path(void **state)
{
	(void)state;
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, NULL), 0);
	static struct load l;
	load_start(&l, d.sock);
	kill9(d.pid);
	for (int c = 0; c < CLIENTS; c++)
		for (int i = 0; i < REGS; i++)
			assert_int_equal(write(l.p[c][i][1], "o", 1), 1);
	struct rdt_daemon d2 = restart_on_path(&d);
	load_check(&l);
	load_stop(&l);
	assert_int_equal(rdt_daemon_stop(&d2), 0);
}

/* A member of a dispatch group is put back in its group after a reconnection, under
 * the same name (the library replays the JOIN with the ADD). */
static void test_group_back_after_reconnect(void **state)
{
	(void)state;
	struct rdt_daemon d;
	assert_int_equal(rdt_daemon_start(&d, NULL), 0);
	rd_client *c;
	assert_int_equal(rd_open(&c, d.sock), 0);
	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(rd_add(c, p[0], 7, RD_READABLE, RD_ONESHOT), 0);
	assert_int_equal(rd_join(c, 7, "g1"), 0);
	char *text = NULL;
	assert_int_equal(rd_control(c, "{\"command\":\"registrations\"}", &text), 0);
	assert_non_null(strstr(text, "\"group\":\"g1\""));
	free(text);

	kill9(d.pid);
	struct rdt_daemon d2 = restart_on_path(&d);
	assert_int_equal(write(p[1], "o", 1), 1);
	/* The call that finds the daemon gone connects again and replays; token 7 is
	 * reported ready once (tick 0). */
	struct rd_event ev;
	assert_int_equal(rd_wait(c, &ev, 1, PATIENCE_MS), 1);
	assert_int_equal(ev.token, 7);
	assert_int_equal(rd_control(c, "{\"command\":\"registrations\"}", &text), 0);
	if (!strstr(text, "\"group\":\"g1\""))
		fail_msg("not back in its group after the reconnection: %s", text);
	free(text);

	rd_close(c);
	close(p[0]);
	close(p[1]);
	assert_int_equal(rdt_daemon_stop(&d2), 0);
}

/* An admin's disconnect takes the connection out of the fd store at once, even when the
 * client does not read and its ERROR cannot go out yet: a crash meanwhile must not hand
 * it back to a new daemon as a client to resync. */
static void test_disconnect_leaves_store_at_once(void **state)
{
	(void)state;
	char sock[96], nsock[96];
	struct store st;
	int listener = managed_setup(&st, sock, nsock);
	pid_t pid = managed_start(listener, &st, nsock);

	rd_client *victim, *admin;
	assert_int_equal(rd_open(&victim, sock), 0);
	assert_int_equal(rd_open(&admin, sock), 0);
	for (int i = 0; i < 100 && st.n < 2; i++)
		store_pump(&st, 50, NULL);
	assert_int_equal(st.n, 2);
	/* The victim asks and never reads: its socket fills, then the daemon's backlog. */
	static const char req[] = "{\"command\":\"status\"}";
	uint8_t msg[64];
	size_t len = rdp_encode_json(msg, sizeof(msg), RDP_MSG_CONTROL, 1, req, sizeof(req) - 1);
	int vfd = rd_fd(victim);
	fcntl(vfd, F_SETFL, fcntl(vfd, F_GETFL) | O_NONBLOCK);
	for (int i = 0; i < 20000 && send(vfd, msg, len, MSG_NOSIGNAL) == (ssize_t)len; i++)
		;
	char *text = NULL;
	assert_int_equal(rd_control(admin, "{\"command\":\"clients\"}", &text), 0);
	char *self = strstr(text, "\"self\":false");
	assert_non_null(self);
	char *idp = self;
	while (idp > text && strncmp(idp, "{\"id\":", 6) != 0)
		idp--;
	long id = strtol(idp + 6, NULL, 10);
	free(text);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "{\"command\":\"disconnect\",\"client\":%ld}", id);
	assert_int_equal(rd_control(admin, cmd, &text), 0);
	assert_non_null(strstr(text, "\"ok\":true"));
	free(text);
	assert_true(store_pump(&st, PATIENCE_MS, "FDSTOREREMOVE=1"));
	assert_int_equal(st.n, 1); /* the admin's connection alone */

	rd_close(victim);
	rd_close(admin);
	managed_end(&st, pid, listener);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_crash_with_fd_store, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_reconnect_by_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_back_after_reconnect, setup, teardown),
		cmocka_unit_test_setup_teardown(test_disconnect_leaves_store_at_once, setup, teardown),
	};
	return cmocka_run_group_tests_name("recovery", tests, NULL, NULL);
}
