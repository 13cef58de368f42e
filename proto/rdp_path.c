/* Default socket path resolution (see rdp_path.h). */
#include "rdp_path.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

int rdp_default_socket_path(char *buf, size_t len)
{
	const char *v;
	int n;

	if ((v = env("READYD_SOCKET")))
		n = snprintf(buf, len, "%s", v);
	else if ((v = env("RUNTIME_DIRECTORY")) && strcspn(v, ":") > 0) {
		/* systemd separates several RuntimeDirectory= entries with ':' */
		n = snprintf(buf, len, "%.*s/%s", (int)strcspn(v, ":"), v, RDP_SOCKET_NAME);
	} else if ((v = env("XDG_RUNTIME_DIR")))
		n = snprintf(buf, len, "%s/%s", v, RDP_SOCKET_NAME);
	else
		n = snprintf(buf, len, "%s", RDP_SOCKET_FALLBACK);
	if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -ENAMETOOLONG;
	return n;
}

int rdp_sockaddr(struct sockaddr_un *sa, const char *path)
{
	size_t n = strlen(path);
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (n == 0 || n >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memcpy(sa->sun_path, path, n);
	return (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}
