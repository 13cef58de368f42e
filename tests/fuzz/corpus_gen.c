/* Writes the seed corpus of the fuzz harnesses: small real messages for fuzz-codec,
 * scripts of them for fuzz-daemon (see its input format), configs for fuzz-config.
 * `make fuzz-corpus` runs it into tests/fuzz/corpus/; the output is checked in. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../proto/rdp.h"

static const char *outdir;

static void put(const char *harness, const char *name, const void *p, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", outdir, harness);
	if (mkdir(path, 0755) < 0 && errno != EEXIST) {
		perror(path);
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/%s/%s", outdir, harness, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

/* ---- fuzz-codec: one byte of fd count, then the message */

static void codec(const char *name, uint8_t nfds, const uint8_t *msg, size_t len)
{
	uint8_t buf[1 + RDP_MSG_MAX];
	buf[0] = nfds;
	memcpy(buf + 1, msg, len);
	put("codec", name, buf, 1 + len);
}

static const struct rdp_add_entry adds[] = {
	{ .token = 1, .interest = RDP_INTEREST_READABLE },
	{ .token = 2, .interest = RDP_INTEREST_WRITABLE, .flags = RDP_FLAG_ONESHOT },
	{ .token = 0xfffffffffffffffeull, .interest = RDP_INTEREST_ALL },
};
static const uint64_t toks[] = { 1, 2, 0xfffffffffffffffeull };

static void codec_seeds(void)
{
	uint8_t m[RDP_MSG_MAX];
	size_t n;

	n = rdp_encode_hello(m, sizeof(m), 1, RDP_VERSION, 0);
	codec("hello", 0, m, n);
	n = rdp_encode_add(m, sizeof(m), 2, adds, 1);
	codec("add-1", 1, m, n);
	n = rdp_encode_add(m, sizeof(m), 3, adds, 3);
	codec("add-3", 3, m, n);
	n = rdp_encode_mod(m, sizeof(m), 4, adds + 1, 2);
	codec("mod-2", 0, m, n);
	n = rdp_encode_tokens(m, sizeof(m), RDP_MSG_DEL, 5, toks, 3);
	codec("del-3", 0, m, n);
	n = rdp_encode_tokens(m, sizeof(m), RDP_MSG_REARM, 6, toks + 1, 1);
	codec("rearm-1", 0, m, n);
	static const char status[] = "{\"command\":\"status\"}";
	n = rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 7, status, strlen(status));
	codec("control-status", 0, m, n);

	struct rdp_welcome w = { .version = 1, .max_message = RDP_MSG_MAX, .max_batch = RDP_BATCH_MAX,
				 .max_registrations = 65536 };
	n = rdp_encode_welcome(m, sizeof(m), 1, &w);
	codec("welcome", 0, m, n);
	rdp_batch_begin(m, RDP_MSG_REPLY, 3);
	rdp_reply_set(m, 0, 0);
	rdp_reply_set(m, 1, 9);
	rdp_reply_set(m, 2, 1);
	n = rdp_batch_finish(m, 3);
	codec("reply-3", 0, m, n);
	rdp_batch_begin(m, RDP_MSG_EVENTS, 0);
	rdp_event_set(m, 0, &(struct rdp_event){ .token = 1, .tick = 1, .ready = RDP_READY_READABLE });
	rdp_event_set(m, 1, &(struct rdp_event){ .token = 2, .tick = 7, .ready = RDP_READY_ALL });
	n = rdp_batch_finish(m, 2);
	codec("events-2", 0, m, n);
	n = rdp_encode_error(m, sizeof(m), 9, 71, RDP_E_STATE, rdp_reason_str(RDP_E_STATE));
	codec("error", 0, m, n);
	static const char reply[] = "{\"ok\":true,\"clients\":[]}";
	n = rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL_REPLY, 7, reply, strlen(reply));
	codec("control-reply", 0, m, n);
	static const char *const names[] = { "workers", "a-group-name-of-32-bytes-exactly" };
	n = rdp_encode_join(m, sizeof(m), 11, toks, names, 2);
	codec("join-2", 0, m, n);
	rdp_batch_begin(m, RDP_MSG_RESYNC_ACK, 12);
	codec("resync-ack", 0, m, RDP_HDR_SIZE);
	rdp_batch_begin(m, RDP_MSG_RESYNC, 0);
	codec("resync", 0, m, RDP_HDR_SIZE);
	/* Hostile shapes: a bare header, a count whose byte size overflows 32 bits. */
	n = rdp_encode_tokens(m, sizeof(m), RDP_MSG_DEL, 10, toks, 1);
	codec("header-only", 0, m, RDP_HDR_SIZE);
	m[12] = 0x00;
	m[13] = 0x00;
	m[14] = 0x00;
	m[15] = 0x20; /* count 2^29: 2^29 * 8 wraps to 0 in 32 bits */
	codec("del-count-overflow", 0, m, n);
}

/* ---- fuzz-daemon: a script of steps (tests/fuzz/fuzz_daemon.c) */

struct script {
	uint8_t b[8192];
	size_t n;
};

/* Pool indexes, as in fuzz_daemon.c. */
enum { P_PIPE_R, P_PIPE_W, P_PIPE2_R, P_EVENTFD, P_EVENTFD_SEM, P_SOCK, P_FILE, P_DEVNULL,
       P_DIR, P_EPOLL, P_PIPE3_W, POOL_N };
/* pick = first + POOL_N * stride */
#define STRIDE1 POOL_N
#define CLIENT1 0x10
#define FIX_LEN 0x08

static void s_bytes(struct script *s, const void *p, size_t n)
{
	memcpy(s->b + s->n, p, n);
	s->n += n;
}

static void s_msg(struct script *s, uint8_t op, uint8_t nfds, uint8_t pick, const void *m, size_t len)
{
	uint8_t h[5] = { op, nfds, pick, (uint8_t)len, (uint8_t)(len >> 8) };
	s_bytes(s, h, 5);
	s_bytes(s, m, len);
}

static void s_op(struct script *s, uint8_t op, uint8_t arg)
{
	uint8_t h[2] = { op, arg };
	s_bytes(s, h, (op & 7) == 7 ? 1 : 2);
}

static void s_hello(struct script *s, uint8_t client)
{
	uint8_t m[64];
	size_t n = rdp_encode_hello(m, sizeof(m), 1, RDP_VERSION, 0);
	s_msg(s, client, 0, 0, m, n);
}

static void s_add(struct script *s, uint8_t client, uint8_t pick, const struct rdp_add_entry *e,
		  uint32_t n)
{
	uint8_t m[RDP_MSG_MAX];
	size_t len = rdp_encode_add(m, sizeof(m), 2, e, n);
	s_msg(s, client, (uint8_t)n, pick, m, len);
}

static void s_tokens(struct script *s, uint8_t client, uint16_t type, const uint64_t *t, uint32_t n)
{
	uint8_t m[RDP_MSG_MAX];
	size_t len = rdp_encode_tokens(m, sizeof(m), type, 3, t, n);
	s_msg(s, client, 0, 0, m, len);
}

static void s_control(struct script *s, uint8_t client, const char *json)
{
	uint8_t m[RDP_MSG_MAX];
	size_t len = rdp_encode_json(m, sizeof(m), RDP_MSG_CONTROL, 4, json, strlen(json));
	s_msg(s, client, 0, 0, m, len);
}

static void daemon_seeds(void)
{
	struct script s;
	uint8_t m[RDP_MSG_MAX];
	size_t n;

	/* A pipe's read end: readable when poked, and deleted. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	s_add(&s, 0, P_PIPE_R, adds, 1);
	s_op(&s, 5, 0x01);
	s_op(&s, 6, 0x01);
	s_op(&s, 5, 0x01);
	s_tokens(&s, 0, RDP_MSG_DEL, toks, 1);
	put("daemon", "add-poke-del", s.b, s.n);

	/* Three kinds of fd, oneshot and edge, re-armed, modified, deleted. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	s_add(&s, 0, P_EVENTFD + STRIDE1, adds, 3);
	s_op(&s, 5, 0x1c);
	s_tokens(&s, 0, RDP_MSG_REARM, toks, 3);
	n = rdp_encode_mod(m, sizeof(m), 5, adds, 3);
	s_msg(&s, 0, 0, 0, m, n);
	s_op(&s, 5, 0x80);
	s_tokens(&s, 0, RDP_MSG_DEL, toks, 3);
	put("daemon", "three-kinds-rearm-mod", s.b, s.n);

	/* Every control command. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	s_add(&s, 0, P_SOCK, adds, 1);
	s_control(&s, 0, "{\"command\":\"status\"}");
	s_control(&s, 0, "{\"command\":\"limits\"}");
	s_control(&s, 0, "{\"command\":\"clients\"}");
	s_control(&s, 0, "{\"command\":\"registrations\",\"offset\":0}");
	s_control(&s, 0, "{\"command\":\"disconnect\",\"client\":2}");
	s_control(&s, 0, "{\"command\":\"nope\"}");
	s_control(&s, 0, "[1,2");
	put("daemon", "control", s.b, s.n);

	/* Two clients, the same token each; one disconnects the other. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	s_hello(&s, CLIENT1);
	s_add(&s, 0, P_PIPE_R, adds, 1);
	s_add(&s, CLIENT1, P_PIPE_R, adds, 1);
	s_op(&s, 5, 0x01);
	s_control(&s, CLIENT1, "{\"command\":\"registrations\",\"client\":1}");
	s_control(&s, CLIENT1, "{\"command\":\"disconnect\",\"client\":1}");
	s_tokens(&s, CLIENT1, RDP_MSG_DEL, toks, 1);
	put("daemon", "two-clients", s.b, s.n);

	/* Files epoll refuses, and a nested epoll; tiny limits (4 registrations per client,
	 * 8 fds beyond the baseline): ENOSPC for the first client, EMFILE for the second. */
	s.n = 0;
	s.b[s.n++] = 0x1;
	s_hello(&s, 0);
	struct rdp_add_entry e6[6];
	for (int i = 0; i < 6; i++)
		e6[i] = (struct rdp_add_entry){ .token = 10u + (unsigned)i, .interest = RDP_INTEREST_READABLE };
	s_add(&s, 0, P_FILE + STRIDE1, e6, 4); /* file, /dev/null, dir, epoll */
	s_add(&s, 0, P_PIPE_R, e6, 6);
	s_hello(&s, CLIENT1);
	s_add(&s, CLIENT1, P_EVENTFD, e6, 4);
	s_op(&s, 5, 0x05);
	put("daemon", "refused-files-limits", s.b, s.n);

	/* The other ends go away: hang-up, read-closed, error. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	s_add(&s, 0, P_PIPE2_R + 3 * STRIDE1, e6, 3); /* pipe B, socket, pipe C's write end */
	s_op(&s, 3, 0x01);
	s_op(&s, 3, 0x02);
	s_op(&s, 3, 0x04);
	s_op(&s, 3, 0x08);
	put("daemon", "hang-ups", s.b, s.n);

	/* Output blocks: a client that does not read asks for large control answers. */
	s.n = 0;
	s.b[s.n++] = 0x2;
	s_hello(&s, 0);
	s_op(&s, 7, 0);
	for (int i = 0; i < 3; i++)
		s_control(&s, 0, "{\"command\":\"clients\"}");
	s_control(&s, 0, "{\"command\":\"status\"}");
	s_op(&s, 7, 0);
	put("daemon", "blocked-output", s.b, s.n);

	/* A client that stops reading while requests and events pile up. */
	s.n = 0;
	s.b[s.n++] = 0x2;
	s_hello(&s, 0);
	s_add(&s, 0, P_PIPE_R + STRIDE1, adds, 3);
	s_op(&s, 7, 0);
	for (int i = 0; i < 24; i++) {
		s_tokens(&s, 0, RDP_MSG_REARM, toks, 3);
		s_op(&s, 5, 0x01);
		s_op(&s, 6, 0x01);
	}
	s_op(&s, 7, 0);
	put("daemon", "not-reading", s.b, s.n);

	/* Protocol errors: request before HELLO, wrong version, fds on HELLO, too big. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_tokens(&s, 0, RDP_MSG_DEL, toks, 1);
	n = rdp_encode_hello(m, sizeof(m), 1, 0, 0);
	s_msg(&s, 0, 0, 0, m, n);
	n = rdp_encode_hello(m, sizeof(m), 1, RDP_VERSION, 0);
	s_msg(&s, 0, 2, P_PIPE_R, m, n);
	s_hello(&s, CLIENT1);
	s_msg(&s, 4 | CLIENT1, 1, P_DEVNULL, m, n);
	put("daemon", "protocol-errors", s.b, s.n);

	/* One connection per uid: the second is refused. */
	s.n = 0;
	s.b[s.n++] = 0x4;
	s_hello(&s, 0);
	s_hello(&s, CLIENT1);
	s_add(&s, 0, P_PIPE_W, adds + 1, 1);
	s_op(&s, 5, 0x02);
	s_op(&s, 6, 0x02);
	put("daemon", "one-per-uid", s.b, s.n);

	/* A policy that makes us no admin, and one that refuses us. */
	s.n = 0;
	s.b[s.n++] = 0x8;
	s_hello(&s, 0);
	s_hello(&s, CLIENT1);
	s_control(&s, 0, "{\"command\":\"clients\"}");
	s_control(&s, 0, "{\"command\":\"disconnect\",\"client\":2}");
	put("daemon", "policy-not-admin", s.b, s.n);
	s.n = 0;
	s.b[s.n++] = 0x10;
	s_hello(&s, 0);
	put("daemon", "policy-refused", s.b, s.n);

	/* A dispatch group: two clients' oneshot registrations of one pipe, joined; one
	 * woken per readiness, re-armed, one leaves. A RESYNC_ACK nobody asked for. */
	s.n = 0;
	s.b[s.n++] = 0;
	n = rdp_encode_hello(m, sizeof(m), 1, RDP_VERSION, RDP_FEATURE_RESYNC);
	s_msg(&s, 0, 0, 0, m, n);
	s_hello(&s, CLIENT1);
	s_add(&s, 0, P_PIPE_R, adds + 1, 1);
	s_add(&s, CLIENT1, P_PIPE_R, adds + 1, 1);
	static const char *const gname[] = { "workers" };
	n = rdp_encode_join(m, sizeof(m), 6, toks + 1, gname, 1);
	s_msg(&s, 0, 0, 0, m, n);
	s_msg(&s, CLIENT1, 0, 0, m, n);
	s_op(&s, 5, 0x01);
	s_tokens(&s, 0, RDP_MSG_REARM, toks + 1, 1);
	s_tokens(&s, CLIENT1, RDP_MSG_REARM, toks + 1, 1);
	s_op(&s, 5, 0x01);
	s_tokens(&s, 0, RDP_MSG_DEL, toks + 1, 1);
	s_op(&s, 5, 0x01);
	rdp_batch_begin(m, RDP_MSG_RESYNC_ACK, 7);
	s_msg(&s, CLIENT1, 0, 0, m, RDP_HDR_SIZE);
	put("daemon", "group-join", s.b, s.n);

	/* A length patched by the harness, and a full batch of 253. */
	s.n = 0;
	s.b[s.n++] = 0;
	s_hello(&s, 0);
	static struct rdp_add_entry e253[RDP_BATCH_MAX];
	for (unsigned i = 0; i < RDP_BATCH_MAX; i++)
		e253[i] = (struct rdp_add_entry){ .token = i, .interest = RDP_INTEREST_READABLE };
	n = rdp_encode_add(m, sizeof(m), 9, e253, RDP_BATCH_MAX);
	m[0] = 0xff; /* wrong; FIX_LEN repairs it */
	s_msg(&s, FIX_LEN, RDP_BATCH_MAX, P_PIPE_R + STRIDE1, m, n);
	s_op(&s, 5, 0x5d);
	put("daemon", "batch-253", s.b, s.n);
}

/* ---- fuzz-config: files */

static void config(const char *name, const char *text)
{
	put("config", name, text, strlen(text));
}

static void config_seeds(void)
{
	config("empty-object", "{}\n");
	config("full",
	       "{\n"
	       "  \"socket\": \"/run/readyd/readyd.sock\",\n"
	       "  \"log_level\": \"notice\",\n"
	       "  \"limits\": {\n"
	       "    \"registrations_per_client\": 4096,\n"
	       "    \"clients_per_uid\": 64,\n"
	       "    \"max_fds\": 100000,\n"
	       "    \"output_bytes_per_client\": 1048576\n"
	       "  },\n"
	       "  \"policy\": {\n"
	       "    \"allow_uids\": [0, 1000],\n"
	       "    \"allow_gids\": [100],\n"
	       "    \"admin_uids\": [0]\n"
	       "  }\n"
	       "}\n");
	config("bad-json", "{\"log_level\": \"info\",}\n");
	config("duplicate-key", "{\"log_level\": \"info\", \"log_level\": \"debug\"}\n");
	config("unknown-key", "{\"limits\": {\"registrations\": 1}}\n");
	config("out-of-range", "{\"limits\": {\"max_fds\": 1}, \"log_level\": 9}\n");
	config("nested", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n");
	config("policy-ids", "{\"policy\": {\"allow_uids\": [4294967294, -1, 1.5, \"0\"]}}\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
		return 2;
	}
	outdir = argv[1];
	if (mkdir(outdir, 0755) < 0 && errno != EEXIST) {
		perror(outdir);
		return 1;
	}
	codec_seeds();
	daemon_seeds();
	config_seeds();
	return 0;
}
