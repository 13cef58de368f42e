/* libreadyd: the C client of readyd, I/O readiness as a service.
 *
 * A connection to readyd feels like an epoll instance that lives in another process:
 * hand it fds with a 64-bit token and an interest set, then wait for readiness events.
 * See libreadyd(3). Every function returns 0 (or a count) on success and -errno on
 * failure. A connection is not thread-safe: use one per thread, or lock around it. */
#ifndef READYD_H
#define READYD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RD_VERSION_STRING "1.0.0"

/* Interest (rd_add, rd_modify). */
#define RD_READABLE 0x1u
#define RD_WRITABLE 0x2u
#define RD_PRIORITY 0x4u

/* Readiness reported in struct rd_event.ready: the interest bits above, plus these,
 * which are reported whatever the interest. */
#define RD_READ_CLOSED  0x08u
#define RD_WRITE_CLOSED 0x10u
#define RD_ERROR        0x20u

/* Registration flags. Edge mode is the default. */
#define RD_EDGE    0x0u
#define RD_ONESHOT 0x1u

/* Number of entries one request carries; larger batches are split and pipelined. */
#define RD_BATCH_MAX 253

typedef struct rd_client rd_client;

struct rd_event {
	uint64_t token;
	uint32_t ready; /* RD_READABLE | ... | RD_ERROR */
	uint32_t tick;  /* per-registration sequence number; newer readiness has a larger tick */
};

/* One entry of a batched call. rd_add_batch reads fd, token, interest and flags;
 * rd_modify_batch reads token, interest and flags; rd_delete_batch and rd_rearm_batch
 * read token. Each call writes status: 0 or -errno for that entry alone. */
struct rd_entry {
	int fd;
	uint64_t token;
	uint32_t interest;
	uint32_t flags;
	int status;
};

/* Connect to readyd at 'path', or at the default socket when path is NULL:
 * $READYD_SOCKET, else $RUNTIME_DIRECTORY/readyd.sock, else $XDG_RUNTIME_DIR/readyd.sock,
 * else /run/readyd/readyd.sock. */
int rd_open(rd_client **out, const char *path);

/* Take an already connected socket (a sandboxed worker's inherited fd) and say HELLO on
 * it. On success the client owns 'fd'; on failure 'fd' is left open and the caller's. */
int rd_adopt(rd_client **out, int fd);

/* Close the connection. The daemon drops every registration of this connection. NULL
 * is accepted. */
void rd_close(rd_client *c);

/* The connection's fd, to put in your own poll/epoll/event loop: it is readable when
 * events (or replies) wait. Then call rd_wait with timeout 0. Do not read from it. */
int rd_fd(const rd_client *c);

/* Register 'fd' (the daemon gets its own copy; you keep yours) under 'token'. */
int rd_add(rd_client *c, int fd, uint64_t token, uint32_t interest, uint32_t flags);
/* Change a registration's interest and mode. Events after the reply follow the new one. */
int rd_modify(rd_client *c, uint64_t token, uint32_t interest, uint32_t flags);
/* Remove a registration. No event for 'token' is returned after this call returns. */
int rd_delete(rd_client *c, uint64_t token);
/* Re-arm a oneshot registration. If the fd is still ready, an event follows at once. */
int rd_rearm(rd_client *c, uint64_t token);

/* Put a oneshot registration in the dispatch group 'group' (1 to 32 bytes), scoped to
 * your uid: registrations of one file, by any number of processes, each readiness of
 * which wakes exactly one armed member, round-robin. Leave a group by deleting the
 * registration. -EINVAL (not oneshot, bad name, interest unlike the group's), -ENOENT,
 * -EBUSY (already a member), -EXDEV (the group is another file). */
int rd_join(rd_client *c, uint64_t token, const char *group);

/* Batched forms: 'n' entries, any number, in as few round trips as the protocol allows
 * (253 entries per request, requests pipelined). Return the number of entries whose
 * status is 0, or -errno when the call as a whole failed (the connection is then lost,
 * and statuses are meaningful only for requests answered before). An entry the library
 * can tell is bad (fd < 0 or closed: -EBADF; reserved bits: -EINVAL) gets its status
 * without being sent, and the rest of the batch goes on. */
int rd_add_batch(rd_client *c, struct rd_entry *e, size_t n);
int rd_modify_batch(rd_client *c, struct rd_entry *e, size_t n);
int rd_delete_batch(rd_client *c, struct rd_entry *e, size_t n);
int rd_rearm_batch(rd_client *c, struct rd_entry *e, size_t n);

/* Wait up to timeout_ms (-1: forever, 0: don't block) and store up to 'max' events.
 * Returns the number stored, 0 on timeout, or -errno. */
int rd_wait(rd_client *c, struct rd_event *ev, size_t max, int timeout_ms);

/* Send a control-plane request (a JSON object) and return the daemon's JSON answer in
 * *reply (malloc'd, NUL-terminated; free it). See readyd-protocol(7). */
int rd_control(rd_client *c, const char *request, char **reply);

/* Resolve the default socket path into buf (as rd_open(NULL) does). Returns its length,
 * or -ENAMETOOLONG. */
int rd_default_socket_path(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
