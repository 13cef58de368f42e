/* libFuzzer harness for the protocol decoder (proto/rdp.c). The input's first byte is the
 * number of fds said to arrive with the message; the rest is the message. Both checkers
 * see it; whatever they accept is read back with every getter and must encode back to the
 * same bytes, so a checker that lets through what the getters misread shows up as a
 * mismatch (abort) and an out-of-bounds read as an ASan report. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/rdp.h"
#include "fuzz.h"

static uint8_t out[RDP_MSG_MAX];

static void same(const void *msg, size_t len, size_t enc_len, const char *what)
{
	if (enc_len != len || memcmp(out, msg, len) != 0) {
		fprintf(stderr, "fuzz-codec: %s does not encode back to the accepted bytes "
				"(%zu bytes in, %zu out)\n", what, len, enc_len);
		abort();
	}
}

/* Every accepted request decodes with its getters and re-encodes to the same bytes. */
static void request(const uint8_t *msg, size_t len, size_t nfds)
{
	struct rdp_hdr h;
	uint32_t reason = rdp_check_request(msg, len, nfds, &h);
	if (!rdp_reason_str(reason))
		abort();
	if (reason != RDP_E_NONE)
		return;
	if (h.length != len || len < RDP_HDR_SIZE || len > RDP_MSG_MAX || h.flags != 0)
		abort();
	bool entries_ok = rdp_check_entries(&h, msg) == RDP_E_NONE;

	switch (h.type) {
	case RDP_MSG_HELLO: {
		uint32_t version, features;
		rdp_hello_get(msg, &version, &features);
		same(msg, len, rdp_encode_hello(out, sizeof(out), h.id, version, features), "HELLO");
		break;
	}
	case RDP_MSG_ADD:
	case RDP_MSG_MOD: {
		struct rdp_add_entry e[RDP_BATCH_MAX];
		if (h.count == 0 || h.count > RDP_BATCH_MAX || (h.type == RDP_MSG_ADD) != (nfds == h.count))
			abort();
		bool reserved = false;
		for (uint32_t i = 0; i < h.count; i++) {
			rdp_add_entry_get(msg, i, &e[i]);
			reserved |= (e[i].interest & ~RDP_INTEREST_ALL) || (e[i].flags & ~RDP_FLAG_ALL);
		}
		if (reserved == entries_ok)
			abort(); /* rdp_check_entries disagrees with the entries */
		size_t n = h.type == RDP_MSG_ADD ? rdp_encode_add(out, sizeof(out), h.id, e, h.count)
						 : rdp_encode_mod(out, sizeof(out), h.id, e, h.count);
		same(msg, len, n, "ADD/MOD");
		break;
	}
	case RDP_MSG_DEL:
	case RDP_MSG_REARM: {
		uint64_t tok[RDP_BATCH_MAX];
		if (h.count == 0 || h.count > RDP_BATCH_MAX || nfds != 0 || !entries_ok)
			abort();
		for (uint32_t i = 0; i < h.count; i++)
			tok[i] = rdp_token_get(msg, i);
		same(msg, len, rdp_encode_tokens(out, sizeof(out), h.type, h.id, tok, h.count),
		     "DEL/REARM");
		break;
	}
	case RDP_MSG_JOIN: {
		static uint64_t tok[RDP_BATCH_MAX];
		static char names[RDP_BATCH_MAX][RDP_GROUP_NAME_SIZE + 1];
		const char *np[RDP_BATCH_MAX];
		bool all_ok = true;
		if (h.count == 0 || h.count > RDP_BATCH_MAX || nfds != 0 || !entries_ok)
			abort();
		for (uint32_t i = 0; i < h.count; i++) {
			const uint8_t *raw = msg + RDP_HDR_SIZE + (size_t)i * RDP_JOIN_ENTRY_SIZE + 8;
			bool ok = rdp_join_entry_get(msg, i, &tok[i], names[i]);
			/* A name is valid when it is not empty and NUL-padded after its end. */
			size_t l = strnlen((const char *)raw, RDP_GROUP_NAME_SIZE);
			bool want = l > 0;
			for (size_t k = l; k < RDP_GROUP_NAME_SIZE; k++)
				want &= raw[k] == 0;
			if (ok != want || strlen(names[i]) != l || memcmp(names[i], raw, l) != 0)
				abort();
			np[i] = names[i];
			all_ok &= ok;
		}
		if (all_ok)
			same(msg, len, rdp_encode_join(out, sizeof(out), h.id, tok, np, h.count), "JOIN");
		break;
	}
	case RDP_MSG_RESYNC_ACK:
		if (h.count != 0 || nfds != 0 || len != RDP_HDR_SIZE)
			abort();
		rdp_batch_begin(out, RDP_MSG_RESYNC_ACK, h.id);
		same(msg, len, RDP_HDR_SIZE, "RESYNC_ACK");
		break;
	case RDP_MSG_CONTROL:
		if (h.count != 0 || nfds != 0 || !entries_ok)
			abort();
		same(msg, len,
		     rdp_encode_json(out, sizeof(out), RDP_MSG_CONTROL, h.id,
				     (const char *)msg + RDP_HDR_SIZE, len - RDP_HDR_SIZE),
		     "CONTROL");
		break;
	default:
		abort(); /* accepted a type that is not a request */
	}
}

/* The same for what a client accepts from the daemon. */
static void daemon_msg(const uint8_t *msg, size_t len, size_t nfds)
{
	struct rdp_hdr h;
	uint32_t reason = rdp_check_daemon_msg(msg, len, nfds, &h);
	if (!rdp_reason_str(reason))
		abort();
	if (reason != RDP_E_NONE)
		return;
	if (h.length != len || len < RDP_HDR_SIZE || len > RDP_MSG_MAX || h.flags != 0 || nfds != 0)
		abort();

	switch (h.type) {
	case RDP_MSG_WELCOME: {
		struct rdp_welcome w;
		rdp_welcome_get(msg, &w);
		same(msg, len, rdp_encode_welcome(out, sizeof(out), h.id, &w), "WELCOME");
		break;
	}
	case RDP_MSG_REPLY:
	case RDP_MSG_EVENTS: {
		uint32_t max = h.type == RDP_MSG_REPLY ? RDP_BATCH_MAX : RDP_EVENTS_MAX;
		if (h.count == 0 || h.count > max)
			abort();
		rdp_batch_begin(out, h.type, h.id);
		for (uint32_t i = 0; i < h.count; i++) {
			if (h.type == RDP_MSG_REPLY) {
				rdp_reply_set(out, i, rdp_status_get(msg, i));
			} else {
				struct rdp_event ev;
				rdp_event_get(msg, i, &ev);
				rdp_event_set(out, i, &ev);
			}
		}
		same(msg, len, rdp_batch_finish(out, h.count), "REPLY/EVENTS");
		break;
	}
	case RDP_MSG_ERROR: {
		uint32_t err, why;
		const char *text;
		size_t tl;
		rdp_error_get(msg, len, &err, &why, &text, &tl);
		if (text != (const char *)msg + RDP_HDR_SIZE + RDP_ERROR_FIXED ||
		    tl != len - RDP_HDR_SIZE - RDP_ERROR_FIXED)
			abort();
		(void)rdp_reason_str(why);
		/* The encoder takes a C string: only texts without a NUL round-trip. */
		if (!memchr(text, '\0', tl)) {
			static char s[RDP_MSG_MAX];
			memcpy(s, text, tl);
			s[tl] = '\0';
			same(msg, len, rdp_encode_error(out, sizeof(out), h.id, err, why, s), "ERROR");
		}
		break;
	}
	case RDP_MSG_RESYNC:
		if (h.count != 0 || len != RDP_HDR_SIZE)
			abort();
		rdp_batch_begin(out, RDP_MSG_RESYNC, h.id);
		same(msg, len, RDP_HDR_SIZE, "RESYNC");
		break;
	case RDP_MSG_CONTROL_REPLY:
		same(msg, len,
		     rdp_encode_json(out, sizeof(out), RDP_MSG_CONTROL_REPLY, h.id,
				     (const char *)msg + RDP_HDR_SIZE, len - RDP_HDR_SIZE),
		     "CONTROL_REPLY");
		break;
	default:
		abort(); /* accepted a type the daemon does not send */
	}
}

/* The bounded cursor never reads past its end, whatever it is asked for. */
static void cursor(const uint8_t *msg, size_t len)
{
	struct rdp_buf b = rdp_buf_init((void *)msg, len);
	struct rdp_hdr h;
	rdp_hdr_get(&b, &h);
	for (unsigned i = 0; !b.err; i++) {
		size_t pos = b.pos;
		switch (i % 3) {
		case 0:
			(void)rdp_get_u64(&b);
			break;
		case 1:
			(void)rdp_get_u32(&b);
			break;
		default:
			(void)rdp_get_u16(&b);
			break;
		}
		if (b.pos > len || (b.err && b.pos != pos))
			abort();
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* libFuzzer's copy ends exactly at data + size, so reading past the message is
	 * caught by ASan without another copy. */
	size_t nfds = data[0];
	const uint8_t *msg = data + 1;
	size_t len = size - 1;

	request(msg, len, nfds);
	daemon_msg(msg, len, nfds);
	cursor(msg, len);
	return 0;
}
