/* readyctl: ask a running readyd what it is doing, through the control plane. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "readyd.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

static void usage(FILE *f)
{
	fprintf(f, "Usage: readyctl [--socket PATH] COMMAND [--json]\n"
		   "Inspect a running readyd.\n"
		   "\n"
		   "Commands:\n"
		   "  status        version, pid, uptime, clients, registrations, events delivered\n"
		   "\n"
		   "Options:\n"
		   "  -s, --socket PATH  the daemon's socket (default: as readyd resolves it)\n"
		   "  -j, --json         print the daemon's JSON answer\n"
		   "  -h, --help         show this help and exit\n"
		   "  -V, --version      show the version and exit\n"
		   "\n"
		   "Exit status: 0 success, 1 the daemon answered with an error or failed,\n"
		   "2 usage error, 3 cannot connect to (or was refused by) the daemon.\n"
		   "See readyctl(1).\n");
}

static void print_uptime(json_int_t usec)
{
	long long s = (long long)(usec / 1000000);
	if (s >= 86400)
		printf("%lldd %02lldh %02lldm %02llds\n", s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
	else
		printf("%02lldh %02lldm %02llds\n", s / 3600, s % 3600 / 60, s % 60);
}

static int print_status(const char *json)
{
	json_error_t err;
	json_t *j = json_loads(json, 0, &err);
	if (!j) {
		fprintf(stderr, "readyctl: bad answer from readyd: %s\n", err.text);
		return EXIT_FAIL;
	}
	if (!json_is_true(json_object_get(j, "ok"))) {
		const char *e = json_string_value(json_object_get(j, "error"));
		fprintf(stderr, "readyctl: readyd: %s\n", e ? e : "request failed");
		json_decref(j);
		return EXIT_FAIL;
	}
	printf("version:          %s (protocol %lld)\n",
	       json_string_value(json_object_get(j, "version")),
	       (long long)json_integer_value(json_object_get(j, "protocol")));
	printf("pid:              %lld\n", (long long)json_integer_value(json_object_get(j, "pid")));
	printf("uptime:           ");
	print_uptime(json_integer_value(json_object_get(j, "uptime_usec")));
	printf("clients:          %lld\n", (long long)json_integer_value(json_object_get(j, "clients")));
	printf("registrations:    %lld\n",
	       (long long)json_integer_value(json_object_get(j, "registrations")));
	printf("events delivered: %lld\n",
	       (long long)json_integer_value(json_object_get(j, "events_delivered")));
	json_decref(j);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	const char *path = NULL;
	int json = 0, o;

	while ((o = getopt_long(argc, argv, "s:jhV", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			path = optarg;
			break;
		case 'j':
			json = 1;
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
	if (optind != argc - 1) {
		fprintf(stderr, "readyctl: %s\n", optind == argc ? "missing command" : "too many arguments");
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[optind];
	if (strcmp(cmd, "status") != 0) {
		fprintf(stderr, "readyctl: unknown command '%s'\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}

	rd_client *c;
	char shown[108];
	int r = rd_open(&c, path);
	if (r < 0) {
		if (!path && rd_default_socket_path(shown, sizeof(shown)) >= 0)
			path = shown;
		fprintf(stderr, "readyctl: cannot connect to readyd at %s: %s\n", path ? path : "?",
			strerror(-r));
		return EXIT_CONNECT;
	}
	char *reply = NULL;
	r = rd_control(c, "{\"command\":\"status\"}", &reply);
	rd_close(c);
	if (r < 0) {
		fprintf(stderr, "readyctl: status: %s\n", strerror(-r));
		return EXIT_FAIL;
	}
	int rc = EXIT_OK;
	if (json) {
		printf("%s\n", reply);
		json_t *j = json_loads(reply, 0, NULL);
		rc = j && json_is_true(json_object_get(j, "ok")) ? EXIT_OK : EXIT_FAIL;
		json_decref(j);
	} else
		rc = print_status(reply);
	free(reply);
	return rc;
}
