/* The readyd protocol codec: framing checks, encoders and decoders over caller buffers.
 * Pure: no syscalls, no allocation, so it can be unit-tested and fuzzed directly. */
#include "rdp.h"

#include <string.h>

static const char *const reason_str[RDP_E_REASON_MAX] = {
	[RDP_E_NONE] = "no error",
	[RDP_E_SHORT] = "message shorter than the 16-byte header",
	[RDP_E_LENGTH] = "header length does not match the bytes received",
	[RDP_E_TOO_BIG] = "message larger than the 65536-byte maximum",
	[RDP_E_TYPE] = "unknown message type",
	[RDP_E_HDR_FLAGS] = "reserved header flags are set",
	[RDP_E_COUNT] = "entry count does not match the message length",
	[RDP_E_BATCH] = "entry count above the batch limit of 253",
	[RDP_E_FDS] = "number of attached fds does not match the message",
	[RDP_E_CTRUNC] = "control data truncated: fds were lost in transit",
	[RDP_E_STATE] = "message not allowed now: HELLO comes first and once, RESYNC_ACK only after RESYNC",
	[RDP_E_VERSION] = "no common protocol version",
	[RDP_E_ENTRY] = "reserved interest or flag bits are set in an entry",
	[RDP_E_BODY] = "message body has the wrong size for its type",
	[RDP_E_RESOURCE] = "connection refused by a limit or the policy",
	[RDP_E_DISCONNECTED] = "disconnected by an administrator",
	[RDP_E_TIMEOUT] = "no HELLO within the handshake timeout",
};

const char *rdp_reason_str(uint32_t reason)
{
	if (reason >= RDP_E_REASON_MAX)
		return "unknown reason";
	return reason_str[reason];
}

static bool room(struct rdp_buf *b, size_t n)
{
	if (b->err || b->len - b->pos < n) {
		b->err = true;
		return false;
	}
	return true;
}

void rdp_put_u16(struct rdp_buf *b, uint16_t v)
{
	if (!room(b, 2))
		return;
	b->p[b->pos] = (uint8_t)v;
	b->p[b->pos + 1] = (uint8_t)(v >> 8);
	b->pos += 2;
}

void rdp_put_u32(struct rdp_buf *b, uint32_t v)
{
	if (!room(b, 4))
		return;
	rdp_st32(b->p + b->pos, v);
	b->pos += 4;
}

void rdp_put_u64(struct rdp_buf *b, uint64_t v)
{
	if (!room(b, 8))
		return;
	rdp_st64(b->p + b->pos, v);
	b->pos += 8;
}

void rdp_put_bytes(struct rdp_buf *b, const void *src, size_t n)
{
	if (!room(b, n))
		return;
	if (n)
		memcpy(b->p + b->pos, src, n);
	b->pos += n;
}

uint16_t rdp_get_u16(struct rdp_buf *b)
{
	if (!room(b, 2))
		return 0;
	uint16_t v = (uint16_t)(b->p[b->pos] | b->p[b->pos + 1] << 8);
	b->pos += 2;
	return v;
}

uint32_t rdp_get_u32(struct rdp_buf *b)
{
	if (!room(b, 4))
		return 0;
	uint32_t v = rdp_le32(b->p + b->pos);
	b->pos += 4;
	return v;
}

uint64_t rdp_get_u64(struct rdp_buf *b)
{
	if (!room(b, 8))
		return 0;
	uint64_t v = rdp_le64(b->p + b->pos);
	b->pos += 8;
	return v;
}

/* The 16 header bytes at p, with bounds already checked: one check per header, not one
 * per field, on the path every message takes. */
static void hdr_store(uint8_t *p, const struct rdp_hdr *h)
{
	rdp_st32(p, h->length);
	p[4] = (uint8_t)h->type;
	p[5] = (uint8_t)(h->type >> 8);
	p[6] = (uint8_t)h->flags;
	p[7] = (uint8_t)(h->flags >> 8);
	rdp_st32(p + 8, h->id);
	rdp_st32(p + 12, h->count);
}

static void hdr_load(const uint8_t *p, struct rdp_hdr *h)
{
	h->length = rdp_le32(p);
	h->type = (uint16_t)(p[4] | p[5] << 8);
	h->flags = (uint16_t)(p[6] | p[7] << 8);
	h->id = rdp_le32(p + 8);
	h->count = rdp_le32(p + 12);
}

void rdp_hdr_put(struct rdp_buf *b, const struct rdp_hdr *h)
{
	if (!room(b, RDP_HDR_SIZE))
		return;
	hdr_store(b->p + b->pos, h);
	b->pos += RDP_HDR_SIZE;
}

void rdp_hdr_get(struct rdp_buf *b, struct rdp_hdr *h)
{
	if (!room(b, RDP_HDR_SIZE)) {
		*h = (struct rdp_hdr){ 0 };
		return;
	}
	hdr_load(b->p + b->pos, h);
	b->pos += RDP_HDR_SIZE;
}

/* The shape of one message type: its body is either 'fixed' bytes, or 'count' entries of
 * 'entry' bytes (1..max_count), or free-form (CONTROL: at least one byte). */
struct shape {
	uint16_t type;
	uint32_t entry;     /* entry size; 0 for messages without entries */
	uint32_t max_count; /* for entry messages */
	uint32_t fixed;     /* exact body size for fixed messages */
	uint32_t min_body;  /* for free-form messages: body at least this */
	bool free_form;
	bool fds_per_entry; /* ADD: one fd per entry */
};

static const struct shape request_shapes[] = {
	{ .type = RDP_MSG_HELLO, .fixed = RDP_HELLO_SIZE },
	{ .type = RDP_MSG_ADD, .entry = RDP_ADD_ENTRY_SIZE, .max_count = RDP_BATCH_MAX,
	  .fds_per_entry = true },
	{ .type = RDP_MSG_MOD, .entry = RDP_MOD_ENTRY_SIZE, .max_count = RDP_BATCH_MAX },
	{ .type = RDP_MSG_DEL, .entry = RDP_TOK_ENTRY_SIZE, .max_count = RDP_BATCH_MAX },
	{ .type = RDP_MSG_REARM, .entry = RDP_TOK_ENTRY_SIZE, .max_count = RDP_BATCH_MAX },
	{ .type = RDP_MSG_CONTROL, .free_form = true, .min_body = 1 },
	{ .type = RDP_MSG_RESYNC_ACK, .fixed = 0 },
	{ .type = RDP_MSG_JOIN, .entry = RDP_JOIN_ENTRY_SIZE, .max_count = RDP_BATCH_MAX },
};

static const struct shape daemon_shapes[] = {
	{ .type = RDP_MSG_WELCOME, .fixed = RDP_WELCOME_SIZE },
	{ .type = RDP_MSG_REPLY, .entry = RDP_STATUS_SIZE, .max_count = RDP_BATCH_MAX },
	{ .type = RDP_MSG_EVENTS, .entry = RDP_EVENT_SIZE, .max_count = RDP_EVENTS_MAX },
	{ .type = RDP_MSG_ERROR, .free_form = true, .min_body = RDP_ERROR_FIXED },
	{ .type = RDP_MSG_CONTROL_REPLY, .free_form = true, .min_body = 1 },
	{ .type = RDP_MSG_RESYNC, .fixed = 0 },
};

static uint32_t check(const struct shape *shapes, size_t nshapes, const void *msg, size_t len,
		      size_t nfds, struct rdp_hdr *h)
{
	if (len < RDP_HDR_SIZE)
		return RDP_E_SHORT;
	if (len > RDP_MSG_MAX)
		return RDP_E_TOO_BIG;

	hdr_load(msg, h);
	if (h->length != len)
		return RDP_E_LENGTH;
	if (h->flags != 0)
		return RDP_E_HDR_FLAGS;

	const struct shape *s = NULL;
	for (size_t i = 0; i < nshapes && !s; i++)
		if (shapes[i].type == h->type)
			s = &shapes[i];
	if (!s)
		return RDP_E_TYPE;

	uint64_t body = len - RDP_HDR_SIZE;
	if (s->entry) {
		if (h->count > s->max_count)
			return RDP_E_BATCH;
		/* 64-bit product of two 32-bit values: cannot overflow. */
		if (h->count == 0 || (uint64_t)h->count * s->entry != body)
			return RDP_E_COUNT;
	} else {
		if (h->count != 0)
			return RDP_E_COUNT;
		if (s->free_form ? body < s->min_body : body != s->fixed)
			return RDP_E_BODY;
	}

	size_t want_fds = s->fds_per_entry ? h->count : 0;
	if (nfds != want_fds)
		return RDP_E_FDS;
	return RDP_E_NONE;
}

uint32_t rdp_check_request(const void *msg, size_t len, size_t nfds, struct rdp_hdr *h)
{
	return check(request_shapes, sizeof(request_shapes) / sizeof(request_shapes[0]), msg, len,
		     nfds, h);
}

uint32_t rdp_check_daemon_msg(const void *msg, size_t len, size_t nfds, struct rdp_hdr *h)
{
	return check(daemon_shapes, sizeof(daemon_shapes) / sizeof(daemon_shapes[0]), msg, len, nfds,
		     h);
}

uint32_t rdp_check_entries(const struct rdp_hdr *h, const void *msg)
{
	if (h->type != RDP_MSG_ADD && h->type != RDP_MSG_MOD)
		return RDP_E_NONE;
	for (uint32_t i = 0; i < h->count; i++) {
		struct rdp_add_entry e;
		rdp_add_entry_get(msg, i, &e);
		if ((e.interest & ~RDP_INTEREST_ALL) || (e.flags & ~RDP_FLAG_ALL))
			return RDP_E_ENTRY;
	}
	return RDP_E_NONE;
}

void rdp_add_entry_get(const void *msg, uint32_t i, struct rdp_add_entry *e)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE + (size_t)i * RDP_ADD_ENTRY_SIZE;
	e->token = rdp_le64(p);
	e->interest = rdp_le32(p + 8);
	e->flags = rdp_le32(p + 12);
}

uint64_t rdp_token_get(const void *msg, uint32_t i)
{
	return rdp_le64((const uint8_t *)msg + RDP_HDR_SIZE + (size_t)i * RDP_TOK_ENTRY_SIZE);
}

bool rdp_join_entry_get(const void *msg, uint32_t i, uint64_t *token, char *name)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE + (size_t)i * RDP_JOIN_ENTRY_SIZE;
	*token = rdp_le64(p);
	memcpy(name, p + 8, RDP_GROUP_NAME_SIZE);
	name[RDP_GROUP_NAME_SIZE] = '\0';
	size_t len = strlen(name);
	for (size_t k = len; k < RDP_GROUP_NAME_SIZE; k++)
		if (name[k])
			return false;
	return len > 0;
}

uint32_t rdp_status_get(const void *msg, uint32_t i)
{
	return rdp_le32((const uint8_t *)msg + RDP_HDR_SIZE + (size_t)i * RDP_STATUS_SIZE);
}

void rdp_event_get(const void *msg, uint32_t i, struct rdp_event *ev)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE + (size_t)i * RDP_EVENT_SIZE;
	ev->token = rdp_le64(p);
	ev->tick = rdp_le32(p + 8);
	ev->ready = rdp_le32(p + 12);
}

/* Write a header for a body of 'body' bytes, or fail when it does not fit. */
static bool begin(struct rdp_buf *b, uint16_t type, uint32_t id, uint32_t count, size_t body)
{
	if (body > RDP_MSG_MAX - RDP_HDR_SIZE || b->len < RDP_HDR_SIZE + body) {
		b->err = true;
		return false;
	}
	struct rdp_hdr h = { .length = (uint32_t)(RDP_HDR_SIZE + body), .type = type, .id = id,
			     .count = count };
	rdp_hdr_put(b, &h);
	return true;
}

static size_t done(const struct rdp_buf *b)
{
	return b->err ? 0 : b->pos;
}

size_t rdp_encode_hello(void *out, size_t cap, uint32_t id, uint32_t version, uint32_t features)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (begin(&b, RDP_MSG_HELLO, id, 0, RDP_HELLO_SIZE)) {
		rdp_put_u32(&b, version);
		rdp_put_u32(&b, features);
	}
	return done(&b);
}

size_t rdp_encode_welcome(void *out, size_t cap, uint32_t id, const struct rdp_welcome *w)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (begin(&b, RDP_MSG_WELCOME, id, 0, RDP_WELCOME_SIZE)) {
		rdp_put_u32(&b, w->version);
		rdp_put_u32(&b, w->features);
		rdp_put_u32(&b, w->max_message);
		rdp_put_u32(&b, w->max_batch);
		rdp_put_u32(&b, w->max_registrations);
		rdp_put_u32(&b, w->reserved);
	}
	return done(&b);
}

static size_t encode_entries(void *out, size_t cap, uint16_t type, uint32_t id,
			     const struct rdp_add_entry *e, uint32_t n)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (n == 0 || n > RDP_BATCH_MAX)
		return 0;
	if (begin(&b, type, id, n, (size_t)n * RDP_ADD_ENTRY_SIZE)) {
		for (uint32_t i = 0; i < n; i++) {
			rdp_put_u64(&b, e[i].token);
			rdp_put_u32(&b, e[i].interest);
			rdp_put_u32(&b, e[i].flags);
		}
	}
	return done(&b);
}

size_t rdp_encode_add(void *out, size_t cap, uint32_t id, const struct rdp_add_entry *e, uint32_t n)
{
	return encode_entries(out, cap, RDP_MSG_ADD, id, e, n);
}

size_t rdp_encode_mod(void *out, size_t cap, uint32_t id, const struct rdp_add_entry *e, uint32_t n)
{
	return encode_entries(out, cap, RDP_MSG_MOD, id, e, n);
}

size_t rdp_encode_tokens(void *out, size_t cap, uint16_t type, uint32_t id, const uint64_t *tok,
			 uint32_t n)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (n == 0 || n > RDP_BATCH_MAX)
		return 0;
	if (begin(&b, type, id, n, (size_t)n * RDP_TOK_ENTRY_SIZE))
		for (uint32_t i = 0; i < n; i++)
			rdp_put_u64(&b, tok[i]);
	return done(&b);
}

size_t rdp_encode_join(void *out, size_t cap, uint32_t id, const uint64_t *tok,
		       const char *const *names, uint32_t n)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (n == 0 || n > RDP_BATCH_MAX)
		return 0;
	if (begin(&b, RDP_MSG_JOIN, id, n, (size_t)n * RDP_JOIN_ENTRY_SIZE)) {
		for (uint32_t i = 0; i < n; i++) {
			uint8_t name[RDP_GROUP_NAME_SIZE] = { 0 };
			size_t l = strnlen(names[i], RDP_GROUP_NAME_SIZE + 1);
			if (l > RDP_GROUP_NAME_SIZE)
				return 0;
			memcpy(name, names[i], l);
			rdp_put_u64(&b, tok[i]);
			rdp_put_bytes(&b, name, sizeof(name));
		}
	}
	return done(&b);
}

size_t rdp_encode_error(void *out, size_t cap, uint32_t id, uint32_t err, uint32_t reason,
			const char *text)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	size_t tl = text ? strlen(text) : 0;
	if (begin(&b, RDP_MSG_ERROR, id, 0, RDP_ERROR_FIXED + tl)) {
		rdp_put_u32(&b, err);
		rdp_put_u32(&b, reason);
		rdp_put_bytes(&b, text, tl);
	}
	return done(&b);
}

size_t rdp_encode_json(void *out, size_t cap, uint16_t type, uint32_t id, const char *json,
		       size_t json_len)
{
	struct rdp_buf b = rdp_buf_init(out, cap);
	if (json_len == 0)
		return 0;
	if (begin(&b, type, id, 0, json_len))
		rdp_put_bytes(&b, json, json_len);
	return done(&b);
}

void rdp_batch_begin(void *out, uint16_t type, uint32_t id)
{
	struct rdp_hdr h = { .length = RDP_HDR_SIZE, .type = type, .id = id };
	hdr_store(out, &h);
}

void rdp_reply_set(void *out, uint32_t i, uint32_t status)
{
	rdp_st32((uint8_t *)out + RDP_HDR_SIZE + (size_t)i * RDP_STATUS_SIZE, status);
}

void rdp_event_set(void *out, uint32_t i, const struct rdp_event *ev)
{
	uint8_t *p = (uint8_t *)out + RDP_HDR_SIZE + (size_t)i * RDP_EVENT_SIZE;
	rdp_st64(p, ev->token);
	rdp_st32(p + 8, ev->tick);
	rdp_st32(p + 12, ev->ready);
}

size_t rdp_batch_finish(void *out, uint32_t count)
{
	uint8_t *p = out;
	uint16_t type = (uint16_t)(p[4] | p[5] << 8);
	size_t entry = type == RDP_MSG_EVENTS ? RDP_EVENT_SIZE : RDP_STATUS_SIZE;
	size_t len = RDP_HDR_SIZE + (size_t)count * entry;
	rdp_st32(p, (uint32_t)len);
	rdp_st32(p + 12, count);
	return len;
}

void rdp_hello_get(const void *msg, uint32_t *version, uint32_t *features)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE;
	*version = rdp_le32(p);
	*features = rdp_le32(p + 4);
}

void rdp_welcome_get(const void *msg, struct rdp_welcome *w)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE;
	w->version = rdp_le32(p);
	w->features = rdp_le32(p + 4);
	w->max_message = rdp_le32(p + 8);
	w->max_batch = rdp_le32(p + 12);
	w->max_registrations = rdp_le32(p + 16);
	w->reserved = rdp_le32(p + 20);
}

void rdp_error_get(const void *msg, size_t len, uint32_t *err, uint32_t *reason, const char **text,
		   size_t *text_len)
{
	const uint8_t *p = (const uint8_t *)msg + RDP_HDR_SIZE;
	*err = rdp_le32(p);
	*reason = rdp_le32(p + 4);
	*text = (const char *)p + RDP_ERROR_FIXED;
	*text_len = len - RDP_HDR_SIZE - RDP_ERROR_FIXED;
}
