/* Parse readyd.json (see config.h and readyd.conf(5)). */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "fault.h"
#include "log.h"

struct limit_key {
	const char *name;
	size_t off;
	json_int_t min;
	json_int_t max;
};

static const struct limit_key limit_keys[] = {
	{ "registrations_per_client", offsetof(struct rdd_config, regs_per_client), 1, 16777216 },
	{ "clients_per_uid", offsetof(struct rdd_config, clients_per_uid), 1, 1048576 },
	{ "registrations_per_uid", offsetof(struct rdd_config, regs_per_uid), 1, 1073741816 },
	{ "handshake_timeout_ms", offsetof(struct rdd_config, handshake_ms), 10, 600000 },
	{ "max_fds", offsetof(struct rdd_config, max_fds), 16, 1073741816 },
	{ "output_bytes_per_client", offsetof(struct rdd_config, out_max), RDP_MSG_MAX,
	  1073741824 },
};

static int bad(char *err, size_t errlen, const char *fmt, const char *key)
{
	snprintf(err, errlen, fmt, key);
	return -EINVAL;
}

static int parse_limits(json_t *o, struct rdd_config *cfg, char *err, size_t errlen)
{
	const char *key;
	json_t *v;

	if (!json_is_object(o))
		return bad(err, errlen, "key \"%s\": expected an object", "limits");
	json_object_foreach(o, key, v) {
		const struct limit_key *lk = NULL;
		for (size_t i = 0; i < sizeof(limit_keys) / sizeof(limit_keys[0]); i++)
			if (strcmp(key, limit_keys[i].name) == 0)
				lk = &limit_keys[i];
		if (!lk)
			return bad(err, errlen, "unknown key \"limits.%.64s\"", key);
		if (!json_is_integer(v) || json_integer_value(v) < lk->min ||
		    json_integer_value(v) > lk->max) {
			snprintf(err, errlen, "key \"limits.%s\": expected an integer from %lld to %lld",
				 key, (long long)lk->min, (long long)lk->max);
			return -EINVAL;
		}
		*(uint32_t *)((char *)cfg + lk->off) = (uint32_t)json_integer_value(v);
	}
	return 0;
}

/* An array of uids or gids: integers from 0 to 2^32-2 (2^32-1 is "no id"). */
static int parse_ids(json_t *v, const char *key, uint32_t *ids, uint32_t *n, char *err,
		     size_t errlen)
{
	size_t i;
	json_t *x;
	if (!json_is_array(v) || json_array_size(v) > RDD_POLICY_MAX_IDS) {
		snprintf(err, errlen, "key \"policy.%s\": expected an array of at most %d ids", key,
			 RDD_POLICY_MAX_IDS);
		return -EINVAL;
	}
	json_array_foreach(v, i, x) {
		if (!json_is_integer(x) || json_integer_value(x) < 0 ||
		    json_integer_value(x) >= (json_int_t)UINT32_MAX) {
			snprintf(err, errlen, "key \"policy.%s\": element %zu is not a uid/gid number", key,
				 i);
			return -EINVAL;
		}
		ids[i] = (uint32_t)json_integer_value(x);
	}
	*n = (uint32_t)json_array_size(v);
	return 0;
}

static int parse_policy(json_t *o, struct rdd_config *cfg, char *err, size_t errlen)
{
	const char *key;
	json_t *v;
	int r;

	if (!json_is_object(o))
		return bad(err, errlen, "key \"%s\": expected an object", "policy");
	struct rdd_policy *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	free(cfg->policy);
	cfg->policy = p;
	json_object_foreach(o, key, v) {
		if (strcmp(key, "allow_uids") == 0)
			r = parse_ids(v, key, p->allow_uids, &p->n_allow_uids, err, errlen);
		else if (strcmp(key, "allow_gids") == 0)
			r = parse_ids(v, key, p->allow_gids, &p->n_allow_gids, err, errlen);
		else if (strcmp(key, "admin_uids") == 0) {
			r = parse_ids(v, key, p->admin_uids, &p->n_admin_uids, err, errlen);
			p->admin_set = true;
		} else
			r = bad(err, errlen, "unknown key \"policy.%.64s\"", key);
		if (r < 0)
			return r;
	}
	return 0;
}

static int read_file(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap || cap >= (64u << 20))
			break;
		char *nb = realloc(buf, cap * 2);
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	int r = ferror(f) ? -EIO : 0;
	fclose(f);
	if (!buf)
		return -ENOMEM;
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	*len = n;
	return 0;
}

/* jansson keeps no positions for values: find where the key named in the message
 * ("a" or "a.b") stands in the text, and prefix its line and column. */
static void locate_error(const char *text, size_t len, char *err, size_t errlen)
{
	const char *q = strchr(err, '"'), *e = q ? strchr(q + 1, '"') : NULL;
	if (!text || !q || !e || strncmp(err, "line ", 5) == 0)
		return;
	char path[160];
	snprintf(path, sizeof(path), "%.*s", (int)(e - q - 1), q + 1);
	size_t at = 0;
	bool found = false;
	for (char *comp = strtok(path, "."); comp; comp = strtok(NULL, ".")) {
		char want[80];
		int wl = snprintf(want, sizeof(want), "\"%s\"", comp);
		found = false;
		for (size_t i = at; wl > 0 && i + (size_t)wl <= len; i++) {
			if (memcmp(text + i, want, (size_t)wl) != 0)
				continue;
			size_t k = i + (size_t)wl;
			while (k < len && strchr(" \t\r\n", text[k]))
				k++;
			if (k < len && text[k] == ':') {
				at = i;
				found = true;
				break;
			}
		}
		if (!found)
			return;
	}
	int line = 1, col = 1;
	for (size_t i = 0; i < at; i++) {
		if (text[i] == '\n') {
			line++;
			col = 1;
		} else
			col++;
	}
	char msg[512];
	snprintf(msg, sizeof(msg), "line %d, column %d: %s", line, col, err);
	snprintf(err, errlen, "%s", msg);
}

int rdd_config_load(const char *path, bool required, struct rdd_config *cfg, char *err,
		    size_t errlen)
{
	json_error_t jerr;
	const char *key;
	json_t *v;
	int r = 0;

	*cfg = (struct rdd_config){ .log_level = -1 };
	if (!required && access(path, F_OK) < 0 && errno == ENOENT)
		return 0;
	char *text = NULL;
	size_t text_len = 0;
	json_t *root = NULL;
	r = read_file(path, &text, &text_len);
	if (r < 0) {
		snprintf(err, errlen, "unable to open file: %s", strerror(-r));
		return r;
	}
	root = json_loadb(text, text_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		free(text);
		if (jerr.line < 0)
			snprintf(err, errlen, "%s", jerr.text);
		else
			snprintf(err, errlen, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(root)) {
		r = bad(err, errlen, "%s", "the top level must be an object");
		goto finish;
	}
	json_object_foreach(root, key, v) {
		if (strcmp(key, "socket") == 0) {
			const char *s = json_string_value(v);
			if (!s || !*s || strlen(s) >= 108) {
				r = bad(err, errlen, "key \"%s\": expected a path of 1 to 107 bytes", key);
				goto finish;
			}
			free(cfg->socket);
			cfg->socket = strdup(s);
			if (!cfg->socket) {
				r = -ENOMEM;
				goto finish;
			}
		} else if (strcmp(key, "log_level") == 0) {
			const char *s = json_string_value(v);
			cfg->log_level = s ? rdd_log_parse_level(s) : -EINVAL;
			if (cfg->log_level < 0) {
				r = bad(err, errlen,
					"key \"%s\": expected one of \"err\", \"warning\", \"notice\", "
					"\"info\", \"debug\"",
					key);
				goto finish;
			}
		} else if (strcmp(key, "limits") == 0) {
			r = parse_limits(v, cfg, err, errlen);
			if (r < 0)
				goto finish;
		} else if (strcmp(key, "policy") == 0) {
			r = parse_policy(v, cfg, err, errlen);
			if (r < 0)
				goto finish;
		} else {
			r = bad(err, errlen, "unknown key \"%.64s\"", key);
			goto finish;
		}
	}
finish:
	json_decref(root);
	if (r < 0) {
		locate_error(text, text_len, err, errlen);
		rdd_config_fini(cfg);
	}
	free(text);
	return r;
}

void rdd_config_fini(struct rdd_config *cfg)
{
	free(cfg->socket);
	cfg->socket = NULL;
	free(cfg->policy);
	cfg->policy = NULL;
}
