/* The control plane: JSON requests in CONTROL messages, JSON answers in CONTROL_REPLY.
 * jansson stays inside this file; the rest of the daemon sees a string. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../proto/rdp.h"
#include "rdd.h"

static json_t *status(struct rdd *d)
{
	uint64_t up = rdd_now_usec(CLOCK_MONOTONIC) - d->start_usec;
	return json_pack("{s:b, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I}", "ok", 1, "version",
			 RDD_VERSION, "protocol", (int)RDP_VERSION, "pid", (json_int_t)getpid(),
			 "uptime_usec", (json_int_t)up, "clients", (json_int_t)d->nclients,
			 "registrations", (json_int_t)d->slab.used, "events_delivered",
			 (json_int_t)d->events_delivered, "connections_accepted",
			 (json_int_t)d->accepted);
}

static json_t *error_reply(const char *fmt, const char *arg)
{
	char text[400];
	snprintf(text, sizeof(text), fmt, arg);
	return json_pack("{s:b, s:s}", "ok", 0, "error", text);
}

char *rdd_control(struct rdd *d, struct rdd_client *c, const char *req, size_t len)
{
	json_error_t jerr;
	json_t *reply;
	(void)c;

	json_t *j = json_loadb(req, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		char where[300];
		snprintf(where, sizeof(where), "line %d column %d: %s", jerr.line, jerr.column,
			 jerr.text);
		reply = error_reply("invalid JSON request: %s", where);
	} else {
		const char *cmd = json_string_value(json_object_get(j, "command"));
		if (!json_is_object(j) || !cmd)
			reply = error_reply("%s", "request must be an object with a string \"command\"");
		else if (strcmp(cmd, "status") == 0)
			reply = status(d);
		else
			reply = error_reply("unknown command \"%.64s\"", cmd);
		json_decref(j);
	}
	if (!reply)
		return NULL;
	char *s = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	return s;
}
