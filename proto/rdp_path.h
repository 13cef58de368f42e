/* The default readyd socket path, resolved the same way by the daemon and the library. */
#ifndef READYD_PROTO_RDP_PATH_H
#define READYD_PROTO_RDP_PATH_H

#include <stddef.h>

#define RDP_SOCKET_NAME "readyd.sock"
#define RDP_SOCKET_FALLBACK "/run/readyd/readyd.sock"

/* $READYD_SOCKET, else $RUNTIME_DIRECTORY/readyd.sock (its first entry when it lists
 * several), else $XDG_RUNTIME_DIR/readyd.sock, else /run/readyd/readyd.sock. Empty
 * variables count as unset. Writes a NUL-terminated path to buf and returns its length,
 * or -ENAMETOOLONG when it does not fit in buf or in sockaddr_un. */
int rdp_default_socket_path(char *buf, size_t len);

/* Fill a sockaddr_un for path; returns its length for bind/connect, or -ENAMETOOLONG. */
struct sockaddr_un;
int rdp_sockaddr(struct sockaddr_un *sa, const char *path);

#endif
