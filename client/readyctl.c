/* readyctl: ask a running readyd what it is doing, and act on it, through the control
 * plane (CONTROL messages with JSON bodies; see readyd-protocol(7)). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "readyctl.h"
#include "readyd.h"

static void usage(FILE *f)
{
	fprintf(f, "Usage: readyctl [--socket PATH] [--json] COMMAND [ARG]\n"
		   "       readyctl [--socket PATH] [--json] top [--iterations N] [--delay SECONDS]\n"
		   "Inspect and administer a running readyd.\n"
		   "\n"
		   "Commands:\n"
		   "  status                  version, pid, uptime, clients, registrations, events\n"
		   "  clients                 connected clients (yours; everyone's for admins)\n"
		   "  registrations [CLIENT]  a client's registrations (default: every client shown\n"
		   "                          by 'clients')\n"
		   "  limits                  the limits in force\n"
		   "  disconnect CLIENT       close a client's connection (admins only)\n"
		   "  reload                  re-read the configuration file (admins only)\n"
		   "  upgrade [--binary PATH] re-execute readyd, or PATH, in place, keeping every\n"
		   "                          client and registration (admins only)\n"
		   "  top                     clients by event rate, refreshed every second;\n"
		   "                          q quits, space refreshes now\n"
		   "\n"
		   "Options:\n"
		   "  -s, --socket PATH      the daemon's socket (default: as readyd resolves it)\n"
		   "  -j, --json             print the daemon's JSON answer(s), one per line\n"
		   "                         (top: one object of its own per refresh)\n"
		   "  -b, --binary PATH      upgrade: the binary to execute (default: readyd's own)\n"
		   "  -n, --iterations N     top: exit after N refreshes\n"
		   "  -d, --delay SECONDS    top: seconds between refreshes (default 1)\n"
		   "  -h, --help             show this help and exit\n"
		   "  -V, --version          show the version and exit\n"
		   "\n"
		   "Exit status: 0 success, 1 the daemon answered with an error or failed,\n"
		   "2 usage error, 3 cannot connect to (or was refused by) the daemon.\n"
		   "See readyctl(1).\n");
}

static rd_client *conn;
static int json_out;

/* Send one request on our connection (see readyctl_ask). */
static json_t *ask(json_t *req, int *rc)
{
	return readyctl_ask(conn, req, json_out, rc);
}

static json_t *get_clients(int *rc)
{
	return readyctl_clients(conn, json_out, rc);
}

json_t *readyctl_ask(rd_client *c, json_t *req, bool print, int *rc)
{
	char *text = json_dumps(req, JSON_COMPACT), *reply = NULL;
	json_decref(req);
	if (!text) {
		*rc = EXIT_FAIL;
		return NULL;
	}
	int r = rd_control(c, text, &reply);
	free(text);
	if (r < 0) {
		fprintf(stderr, "readyctl: %s\n", strerror(-r));
		*rc = EXIT_FAIL;
		return NULL;
	}
	json_t *j = json_loads(reply, 0, NULL);
	if (print)
		printf("%s\n", reply);
	free(reply);
	if (!j) {
		fprintf(stderr, "readyctl: the daemon's answer is not JSON\n");
		*rc = EXIT_FAIL;
		return NULL;
	}
	if (!json_is_true(json_object_get(j, "ok"))) {
		const char *e = json_string_value(json_object_get(j, "error"));
		fprintf(stderr, "readyctl: readyd: %s\n", e ? e : "request failed");
		json_decref(j);
		*rc = EXIT_FAIL;
		return NULL;
	}
	return j;
}

void readyctl_printable(char *dst, size_t cap, const char *src)
{
	size_t i = 0;
	for (; src && src[i] && i + 1 < cap; i++) {
		unsigned char ch = (unsigned char)src[i];
		dst[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	dst[i] = '\0';
}

static long long num(json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

static void print_duration(long long s)
{
	if (s >= 86400)
		printf("%lldd %02lldh %02lldm %02llds", s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
	else
		printf("%02lldh %02lldm %02llds", s / 3600, s % 3600 / 60, s % 60);
}

static int cmd_status(void)
{
	int rc = EXIT_OK;
	json_t *j = ask(json_pack("{s:s}", "command", "status"), &rc);
	if (!j || json_out)
		goto out;
	printf("version:          %s (protocol %lld)\n", json_string_value(json_object_get(j, "version")),
	       num(j, "protocol"));
	printf("pid:              %lld\n", num(j, "pid"));
	printf("uptime:           ");
	print_duration(num(j, "uptime_usec") / 1000000);
	printf("\nclients:          %lld\n", num(j, "clients"));
	printf("registrations:    %lld\n", num(j, "registrations"));
	printf("events delivered: %lld\n", num(j, "events_delivered"));
	printf("upgrades:         %lld\n", num(j, "upgrades"));
out:
	json_decref(j);
	return rc;
}

static int cmd_limits(void)
{
	int rc = EXIT_OK;
	json_t *j = ask(json_pack("{s:s}", "command", "limits"), &rc);
	if (!j || json_out)
		goto out;
	printf("registrations per client: %lld\n", num(j, "registrations_per_client"));
	printf("clients per uid:          %lld\n", num(j, "clients_per_uid"));
	printf("fds (in use / limit):     %lld / %lld\n", num(j, "fds_in_use"), num(j, "max_fds"));
	printf("queued output per client: %lld bytes\n", num(j, "output_bytes_per_client"));
	printf("message size:             %lld bytes\n", num(j, "message_bytes"));
	printf("entries per request:      %lld\n", num(j, "batch_entries"));
	printf("events per message:       %lld\n", num(j, "events_per_message"));
out:
	json_decref(j);
	return rc;
}

json_t *readyctl_clients(rd_client *c, bool print, int *rc)
{
	json_t *all = NULL;
	json_int_t offset = 0;
	/* Bounded: each page moves the offset on, and there are fewer than 2^31 clients. */
	while (offset >= 0) {
		json_t *j = readyctl_ask(c, json_pack("{s:s, s:I}", "command", "clients", "offset",
						      offset), print, rc);
		if (!j) {
			json_decref(all);
			return NULL;
		}
		json_t *next = json_object_get(j, "next_offset");
		json_int_t n = json_is_integer(next) ? json_integer_value(next) : -1;
		offset = n > offset ? n : -1;
		if (!all) {
			all = j;
			continue;
		}
		json_array_extend(json_object_get(all, "clients"), json_object_get(j, "clients"));
		json_decref(j);
	}
	return all;
}

static int cmd_clients(void)
{
	int rc = EXIT_OK;
	json_t *j = get_clients(&rc);
	if (!j || json_out)
		goto out;
	size_t i;
	json_t *c;
	time_t now = time(NULL);
	printf("%6s %8s %6s %-15s %8s %8s %12s  %s\n", "ID", "PID", "UID", "COMMAND", "REGS", "QUEUED",
	       "DELIVERED", "CONNECTED");
	json_array_foreach(json_object_get(j, "clients"), i, c) {
		long long since = num(c, "connected_since_usec") / 1000000;
		char comm[16];
		readyctl_printable(comm, sizeof(comm), json_string_value(json_object_get(c, "comm")));
		printf("%6lld %8lld %6lld %-15s %8lld %8lld %12lld  ", num(c, "id"), num(c, "pid"),
		       num(c, "uid"), comm,
		       num(c, "registrations"), num(c, "queued_events"), num(c, "events_delivered"));
		print_duration(now > since ? now - since : 0);
		printf(" ago%s\n", json_is_true(json_object_get(c, "self")) ? " (this readyctl)" : "");
	}
out:
	json_decref(j);
	return rc;
}

static void print_bits(json_t *a)
{
	size_t i;
	json_t *b;
	char line[128] = "";
	json_array_foreach(a, i, b) {
		if (i)
			strncat(line, ",", sizeof(line) - strlen(line) - 1);
		strncat(line, json_string_value(b), sizeof(line) - strlen(line) - 1);
	}
	printf(" %-28s", line[0] ? line : "-");
}

/* One client's registrations, page by page. */
static int show_registrations(long long id, int *header)
{
	int rc = EXIT_OK;
	json_int_t offset = 0;
	do {
		json_t *j = ask(json_pack("{s:s, s:I, s:I}", "command", "registrations", "client",
					  (json_int_t)id, "offset", offset),
				&rc);
		if (!j)
			return rc;
		if (!json_out) {
			if (!*header) {
				printf("%6s %20s %-12s %-24s %-8s %-28s %10s  %s\n", "CLIENT", "TOKEN",
				       "FD TYPE", "INTEREST", "MODE", "PENDING", "TICK", "GROUP");
				*header = 1;
			}
			size_t i;
			json_t *r;
			json_array_foreach(json_object_get(j, "registrations"), i, r) {
				printf("%6lld %20s %-12s", id, json_string_value(json_object_get(r, "token")),
				       json_string_value(json_object_get(r, "fd_type")));
				char in[64] = "";
				size_t k;
				json_t *b;
				json_array_foreach(json_object_get(r, "interest"), k, b) {
					if (k)
						strcat(in, ",");
					strncat(in, json_string_value(b), sizeof(in) - strlen(in) - 2);
				}
				printf(" %-24s %-8s", in, json_string_value(json_object_get(r, "mode")));
				print_bits(json_object_get(r, "pending"));
				const char *grp = json_string_value(json_object_get(r, "group"));
				printf(" %10lld  %s\n", num(r, "tick"), grp ? grp : "-");
			}
		}
		json_t *next = json_object_get(j, "next_offset");
		offset = json_is_integer(next) ? json_integer_value(next) : -1;
		json_decref(j);
	} while (offset > 0);
	return rc;
}

/* A client id from the command line: a whole number from 1. */
static bool parse_id(const char *arg, long long *id)
{
	char *end;
	errno = 0;
	*id = arg ? strtoll(arg, &end, 10) : 0;
	return arg && !errno && end != arg && !*end && *id > 0;
}

/* id 0: every client's that 'clients' shows. */
static int cmd_registrations(long long id)
{
	int header = 0;
	if (id)
		return show_registrations(id, &header);
	int saved = json_out, rc = EXIT_OK;
	json_out = 0; /* the client list is a means here, not an answer to print */
	json_t *j = get_clients(&rc);
	json_out = saved;
	if (!j)
		return rc;
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(j, "clients"), i, c) {
		if (json_is_true(json_object_get(c, "self")))
			continue;
		int r = show_registrations(num(c, "id"), &header);
		if (r != EXIT_OK)
			rc = r;
	}
	json_decref(j);
	return rc;
}

static int cmd_disconnect(long long id)
{
	int rc = EXIT_OK;
	json_t *j = ask(json_pack("{s:s, s:I}", "command", "disconnect", "client", (json_int_t)id), &rc);
	if (j && !json_out)
		printf("disconnected client %lld\n", id);
	json_decref(j);
	return rc;
}

static int cmd_reload(void)
{
	int rc = EXIT_OK;
	json_t *j = ask(json_pack("{s:s}", "command", "reload"), &rc);
	if (j && !json_out)
		printf("reloaded: %lld registrations per client, %lld clients per uid, fd limit %lld\n",
		       num(j, "registrations_per_client"), num(j, "clients_per_uid"), num(j, "max_fds"));
	json_decref(j);
	return rc;
}

/* The answer comes from the new binary, over the same connection. */
static int cmd_upgrade(const char *binary)
{
	int rc = EXIT_OK;
	json_t *req = binary ? json_pack("{s:s, s:s}", "command", "upgrade", "binary", binary)
			     : json_pack("{s:s}", "command", "upgrade");
	json_t *j = ask(req, &rc);
	if (j && !json_out)
		printf("upgraded: readyd %s, pid %lld\n", json_string_value(json_object_get(j, "version")),
		       num(j, "pid"));
	json_decref(j);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "iterations", required_argument, NULL, 'n' },
		{ "delay", required_argument, NULL, 'd' },
		{ "binary", required_argument, NULL, 'b' },
		{ 0 },
	};
	const char *path = NULL;
	struct top_opts top = { .iterations = 0, .delay = 1.0 };
	bool top_opt = false;
	const char *binary = NULL;
	char *end;
	int o;

	while ((o = getopt_long(argc, argv, "s:jhVn:d:b:", opts, NULL)) != -1) {
		switch (o) {
		case 'b':
			binary = optarg;
			break;
		case 's':
			path = optarg;
			break;
		case 'j':
			json_out = 1;
			break;
		case 'n':
			errno = 0;
			top.iterations = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || top.iterations < 1) {
				fprintf(stderr, "readyctl: --iterations needs a whole number from 1\n");
				return EXIT_USAGE;
			}
			top_opt = true;
			break;
		case 'd':
			top.delay = strtod(optarg, &end);
			if (end == optarg || *end || !isfinite(top.delay) || top.delay <= 0 ||
			    top.delay > 86400) {
				fprintf(stderr, "readyctl: --delay needs seconds, more than 0 and at most 86400\n");
				return EXIT_USAGE;
			}
			top_opt = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf("readyctl %s\n", RD_VERSION_STRING);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind == argc) {
		fprintf(stderr, "readyctl: missing command\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[optind];
	const char *arg = optind + 1 < argc ? argv[optind + 1] : NULL;
	int max_args = strcmp(cmd, "registrations") == 0 || strcmp(cmd, "disconnect") == 0 ? 2 : 1;
	static const char *const known[] = { "status", "clients", "registrations", "limits",
					     "disconnect", "top", "reload", "upgrade" };
	int ok = 0;
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		ok |= strcmp(cmd, known[i]) == 0;
	if (!ok || argc - optind > max_args) {
		fprintf(stderr, "readyctl: %s '%s'\n", ok ? "too many arguments for" : "unknown command", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (binary && strcmp(cmd, "upgrade") != 0) {
		fprintf(stderr, "readyctl: --binary is an option of upgrade\n");
		return EXIT_USAGE;
	}
	if (top_opt && strcmp(cmd, "top") != 0) {
		fprintf(stderr, "readyctl: --iterations and --delay are options of top\n");
		return EXIT_USAGE;
	}

	/* Arguments are checked before connecting: a usage error is one with or without
	 * a daemon. */
	long long id = 0;
	if ((strcmp(cmd, "registrations") == 0 && arg) || strcmp(cmd, "disconnect") == 0) {
		if (!parse_id(arg, &id)) {
			fprintf(stderr, "readyctl: %s needs a client id, as 'readyctl clients' shows\n",
				cmd);
			return EXIT_USAGE;
		}
	}

	char shown[108];
	int r = rd_open(&conn, path);
	if (r < 0) {
		if (!path && rd_default_socket_path(shown, sizeof(shown)) >= 0)
			path = shown;
		fprintf(stderr, "readyctl: cannot connect to readyd at %s: %s\n", path ? path : "?",
			strerror(-r));
		return EXIT_CONNECT;
	}
	int rc;
	if (strcmp(cmd, "status") == 0)
		rc = cmd_status();
	else if (strcmp(cmd, "clients") == 0)
		rc = cmd_clients();
	else if (strcmp(cmd, "registrations") == 0)
		rc = cmd_registrations(id);
	else if (strcmp(cmd, "limits") == 0)
		rc = cmd_limits();
	else if (strcmp(cmd, "disconnect") == 0)
		rc = cmd_disconnect(id);
	else if (strcmp(cmd, "reload") == 0)
		rc = cmd_reload();
	else if (strcmp(cmd, "upgrade") == 0)
		rc = cmd_upgrade(binary);
	else {
		top.json = json_out;
		rc = readyctl_top(conn, &top);
	}
	rd_close(conn);
	/* Output that could not be written is a failure (readyctl status > /dev/full); a
	 * reader that went away (readyctl clients | head -1) is not. */
	errno = 0;
	if ((fflush(stdout) != 0 || ferror(stdout)) && errno != EPIPE && rc == EXIT_OK) {
		fprintf(stderr, "readyctl: writing the output: %s\n",
			errno ? strerror(errno) : "error");
		rc = EXIT_FAIL;
	}
	return rc;
}
