/* readyd wire protocol, version 1: message layout, constants and a pure codec.
 * Everything here is bytes in, bytes out: no syscalls, no allocation. The layout is
 * normative in man/readyd-protocol.7; the two must change together. */
#ifndef READYD_PROTO_RDP_H
#define READYD_PROTO_RDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RDP_VERSION 1u

/* Sizes and limits that are part of the protocol. */
#define RDP_HDR_SIZE       16u     /* every message starts with this header */
#define RDP_MSG_MAX        65536u  /* largest message either side may send, header included */
#define RDP_BATCH_MAX      253u    /* entries in ADD/MOD/DEL/REARM; = SCM_MAX_FD for ADD */
#define RDP_ADD_ENTRY_SIZE 16u     /* u64 token, u32 interest, u32 flags */
#define RDP_MOD_ENTRY_SIZE 16u     /* same layout as ADD */
#define RDP_TOK_ENTRY_SIZE 8u      /* DEL and REARM: u64 token */
#define RDP_GROUP_NAME_SIZE 32u    /* JOIN: a group name, NUL-padded */
#define RDP_JOIN_ENTRY_SIZE 40u    /* JOIN: u64 token, then the name */
#define RDP_STATUS_SIZE    4u      /* REPLY: u32 errno, 0 = success */
#define RDP_EVENT_SIZE     16u     /* EVENTS: u64 token, u32 tick, u32 ready */
#define RDP_HELLO_SIZE     8u      /* HELLO body: u32 version, u32 features */
#define RDP_WELCOME_SIZE   24u     /* WELCOME body, see struct rdp_welcome */
#define RDP_ERROR_FIXED    8u      /* ERROR body before its text: u32 errno, u32 reason */
#define RDP_EVENTS_MAX     ((RDP_MSG_MAX - RDP_HDR_SIZE) / RDP_EVENT_SIZE) /* 4095 */

_Static_assert(RDP_HDR_SIZE + RDP_BATCH_MAX * RDP_ADD_ENTRY_SIZE <= RDP_MSG_MAX, "ADD fits");
_Static_assert(RDP_EVENTS_MAX == 4095, "events per packet");

/* Message types. Requests (client to daemon) have bit 15 clear; messages from the daemon
 * have it set. */
enum rdp_type {
	RDP_MSG_HELLO   = 0x0001, /* first message of a connection */
	RDP_MSG_ADD     = 0x0002, /* count entries, count fds attached */
	RDP_MSG_MOD     = 0x0003,
	RDP_MSG_DEL     = 0x0004,
	RDP_MSG_REARM   = 0x0005,
	RDP_MSG_CONTROL = 0x0006, /* JSON request body */
	RDP_MSG_RESYNC_ACK = 0x0007, /* the client has seen RESYNC; requests count again */
	RDP_MSG_JOIN    = 0x0008, /* put oneshot registrations in a named dispatch group */

	RDP_MSG_WELCOME       = 0x8001, /* answer to HELLO */
	RDP_MSG_REPLY         = 0x8002, /* answer to ADD/MOD/DEL/REARM: a status per entry */
	RDP_MSG_EVENTS        = 0x8003, /* unsolicited batch of readiness records */
	RDP_MSG_ERROR         = 0x8004, /* protocol error; the daemon then disconnects */
	RDP_MSG_CONTROL_REPLY = 0x8005, /* JSON answer to CONTROL */
	RDP_MSG_RESYNC        = 0x8006, /* the daemon restarted: re-add your registrations */
};

/* Interest bits (ADD, MOD). */
#define RDP_INTEREST_READABLE 0x1u
#define RDP_INTEREST_WRITABLE 0x2u
#define RDP_INTEREST_PRIORITY 0x4u
#define RDP_INTEREST_ALL      0x7u

/* Readiness bits (EVENTS). */
#define RDP_READY_READABLE     0x01u
#define RDP_READY_WRITABLE     0x02u
#define RDP_READY_PRIORITY     0x04u
#define RDP_READY_READ_CLOSED  0x08u
#define RDP_READY_WRITE_CLOSED 0x10u
#define RDP_READY_ERROR        0x20u
#define RDP_READY_ALL          0x3fu

/* Registration flags (ADD, MOD). */
#define RDP_FLAG_ONESHOT 0x1u
#define RDP_FLAG_ALL     0x1u

/* Feature bits offered in HELLO and granted in WELCOME: the daemon grants the
 * intersection of what it knows and what was asked. */
#define RDP_FEATURE_RESYNC 0x1u /* keep this connection across a daemon crash, then RESYNC */
#define RDP_FEATURES_KNOWN 0x1u

/* Why a message was refused. Sent in ERROR; the connection is then closed. */
enum rdp_reason {
	RDP_E_NONE = 0,
	RDP_E_SHORT,       /* shorter than the header, or empty */
	RDP_E_LENGTH,      /* header length differs from the bytes received */
	RDP_E_TOO_BIG,     /* over RDP_MSG_MAX (MSG_TRUNC) */
	RDP_E_TYPE,        /* unknown or daemon-only message type */
	RDP_E_HDR_FLAGS,   /* reserved header flags set */
	RDP_E_COUNT,       /* count does not match the length, or is zero */
	RDP_E_BATCH,       /* count above RDP_BATCH_MAX */
	RDP_E_FDS,         /* fds attached differ from what the message takes */
	RDP_E_CTRUNC,      /* control data truncated (MSG_CTRUNC): fds were lost */
	RDP_E_STATE,       /* HELLO missing, or sent twice */
	RDP_E_VERSION,     /* no common protocol version */
	RDP_E_ENTRY,       /* reserved bits set in an entry's interest or flags */
	RDP_E_BODY,        /* a fixed-size body has the wrong size */
	RDP_E_RESOURCE,    /* the daemon refused the connection: a limit or policy */
	RDP_E_DISCONNECTED, /* an administrator closed this connection (not a restart) */
	RDP_E_TIMEOUT,     /* no HELLO within the handshake timeout */
	RDP_E_REASON_MAX,
};

const char *rdp_reason_str(uint32_t reason);

struct rdp_hdr {
	uint32_t length; /* whole message in bytes, header included */
	uint16_t type;
	uint16_t flags;  /* reserved, must be 0 */
	uint32_t id;     /* request id, echoed in the answer; 0 in EVENTS */
	uint32_t count;  /* entries in the body; 0 for HELLO, WELCOME, ERROR, CONTROL* */
};

struct rdp_add_entry {
	uint64_t token;
	uint32_t interest;
	uint32_t flags;
};

struct rdp_event {
	uint64_t token;
	uint32_t tick;
	uint32_t ready;
};

struct rdp_welcome {
	uint32_t version;
	uint32_t features;
	uint32_t max_message;
	uint32_t max_batch;
	uint32_t max_registrations; /* per connection */
	uint32_t reserved;          /* 0 */
};

/* A bounded cursor over a buffer. Writes past the end set 'err' and write nothing, so a
 * sequence of puts is checked once at the end (imsg's ibuf). */
struct rdp_buf {
	uint8_t *p;
	size_t len;
	size_t pos;
	bool err;
};

static inline struct rdp_buf rdp_buf_init(void *p, size_t len)
{
	return (struct rdp_buf){ .p = p, .len = len, .pos = 0, .err = false };
}

void rdp_put_u16(struct rdp_buf *b, uint16_t v);
void rdp_put_u32(struct rdp_buf *b, uint32_t v);
void rdp_put_u64(struct rdp_buf *b, uint64_t v);
void rdp_put_bytes(struct rdp_buf *b, const void *src, size_t n);
uint16_t rdp_get_u16(struct rdp_buf *b);
uint32_t rdp_get_u32(struct rdp_buf *b);
uint64_t rdp_get_u64(struct rdp_buf *b);

/* Little-endian loads and stores at a fixed place, for hot paths that already checked
 * their bounds. */
static inline uint32_t rdp_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rdp_le64(const uint8_t *p)
{
	return (uint64_t)rdp_le32(p) | (uint64_t)rdp_le32(p + 4) << 32;
}

static inline void rdp_st32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void rdp_st64(uint8_t *p, uint64_t v)
{
	rdp_st32(p, (uint32_t)v);
	rdp_st32(p + 4, (uint32_t)(v >> 32));
}

/* Header. rdp_hdr_put writes 16 bytes; rdp_hdr_get reads them. */
void rdp_hdr_put(struct rdp_buf *b, const struct rdp_hdr *h);
void rdp_hdr_get(struct rdp_buf *b, struct rdp_hdr *h);

/* Check a received message of 'len' bytes carrying 'nfds' fds. Returns RDP_E_NONE and
 * fills 'h' when the framing is valid for a message sent to the daemon (requests) or
 * to a client (!requests); otherwise the reason. Entry contents are checked by
 * rdp_check_entries. */
uint32_t rdp_check_request(const void *msg, size_t len, size_t nfds, struct rdp_hdr *h);
uint32_t rdp_check_daemon_msg(const void *msg, size_t len, size_t nfds, struct rdp_hdr *h);

/* Check every entry of a framed ADD or MOD for reserved bits. */
uint32_t rdp_check_entries(const struct rdp_hdr *h, const void *msg);

/* Entry accessors for a checked message; i < h->count. */
void rdp_add_entry_get(const void *msg, uint32_t i, struct rdp_add_entry *e);
uint64_t rdp_token_get(const void *msg, uint32_t i);
/* JOIN entry i: its token, and its name as a NUL-terminated string in name[33].
 * Returns false when the name is empty or has bytes after its first NUL. */
bool rdp_join_entry_get(const void *msg, uint32_t i, uint64_t *token, char *name);
uint32_t rdp_status_get(const void *msg, uint32_t i);
void rdp_event_get(const void *msg, uint32_t i, struct rdp_event *ev);

/* Encoders. Each returns the message length, or 0 when 'cap' is too small or the message
 * would be invalid (no entries, more than RDP_BATCH_MAX, an empty JSON body). */
size_t rdp_encode_hello(void *out, size_t cap, uint32_t id, uint32_t version, uint32_t features);
size_t rdp_encode_welcome(void *out, size_t cap, uint32_t id, const struct rdp_welcome *w);
size_t rdp_encode_add(void *out, size_t cap, uint32_t id, const struct rdp_add_entry *e, uint32_t n);
size_t rdp_encode_mod(void *out, size_t cap, uint32_t id, const struct rdp_add_entry *e, uint32_t n);
size_t rdp_encode_join(void *out, size_t cap, uint32_t id, const uint64_t *tok,
		       const char *const *names, uint32_t n);
size_t rdp_encode_tokens(void *out, size_t cap, uint16_t type, uint32_t id, const uint64_t *tok,
			 uint32_t n);
size_t rdp_encode_error(void *out, size_t cap, uint32_t id, uint32_t err, uint32_t reason,
			const char *text);
size_t rdp_encode_json(void *out, size_t cap, uint16_t type, uint32_t id, const char *json,
		       size_t json_len);

/* Incremental encoders for REPLY and EVENTS: begin writes the header with count 0,
 * each add appends a record, finish patches length and count. */
void rdp_batch_begin(void *out, uint16_t type, uint32_t id);
void rdp_reply_set(void *out, uint32_t i, uint32_t status);
void rdp_event_set(void *out, uint32_t i, const struct rdp_event *ev);
size_t rdp_batch_finish(void *out, uint32_t count);

/* Decoders for fixed bodies of checked messages. */
void rdp_hello_get(const void *msg, uint32_t *version, uint32_t *features);
void rdp_welcome_get(const void *msg, struct rdp_welcome *w);
/* ERROR: errno, reason, and the text (not NUL-terminated) with its length. */
void rdp_error_get(const void *msg, size_t len, uint32_t *err, uint32_t *reason, const char **text,
		   size_t *text_len);

#endif
