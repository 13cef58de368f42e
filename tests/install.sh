#!/usr/bin/env bash
# make install and make uninstall, as a packager and a C programmer use them: install into
# a DESTDIR with PREFIX=/usr, build examples/echo-server.c against the staged tree with
# pkg-config alone, run it against the staged readyd and check that it echoes, then
# uninstall and check that only directories are left. A second install with another
# PREFIX checks that the units and readyd.pc follow the directories.
#
#   tests/install.sh [BUILD_DIR]      (run from anywhere; BUILD_DIR as make's B)
#
# Uses $MAKE and $CC when set (make check passes its own).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
b=${1:-build}
make=${MAKE:-make}
cc=${CC:-cc}

t=$(mktemp -d /tmp/readyd-install-XXXXXX)
pids=()
cleanup() {
	# Only what this script started, by pid, each waited for.
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$t"
}
trap cleanup EXIT

pass=0 fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
notok() { echo "not ok - $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else notok "$what"; fi; }
# wait_for N COMMAND...: retry COMMAND up to N times, 100 ms apart.
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
# mk DESTDIR VAR=VALUE... TARGET
mk() { local d=$1; shift; (cd "$here" && "$make" --no-print-directory -s B="$b" DESTDIR="$d" "$@"); }
# Files and links under a tree, relative to it, sorted.
files_in() { (cd "$1" && find . ! -type d | sort); }

# 1. Install with PREFIX=/usr into a DESTDIR.
root=$t/root
if ! mk "$root" PREFIX=/usr install > "$t/install.log" 2>&1; then
	notok "make install PREFIX=/usr DESTDIR=$root"; cat "$t/install.log"; exit 1
fi
pc=$(find "$root" -name readyd.pc)
libdir=${pc%/pkgconfig/readyd.pc}
usr=$root/usr
check "readyd in sbin, readyctl in bin" test -x "$usr/sbin/readyd" -a -x "$usr/bin/readyctl"
check "readyd.pc in \$LIBDIR/pkgconfig, under /usr/lib" test -n "$pc" -a "${libdir#"$usr"/lib}" != "$libdir"
check "libreadyd.so -> .so.1 -> .so.1.0.0, and libreadyd.a" \
	test "$(readlink "$libdir/libreadyd.so")" = libreadyd.so.1 -a \
	"$(readlink "$libdir/libreadyd.so.1")" = libreadyd.so.1.0.0 -a \
	-f "$libdir/libreadyd.so.1.0.0" -a -f "$libdir/libreadyd.a"
check "readyd.h" cmp -s "$here/client/readyd.h" "$usr/include/readyd.h"
nman=$(ls "$here"/man/*.[1-8] | wc -l)
check "all $nman man pages" test "$(find "$usr/share/man" ! -type d | wc -l)" = "$nman"
check "link pages are symbolic links: rd_add.3 -> libreadyd.3" \
	test "$(readlink "$usr/share/man/man3/rd_add.3")" = libreadyd.3
check "rd_add(3) resolves in the installed tree" \
	bash -c "MANWIDTH=80 man -M '$usr/share/man' -P cat 3 rd_add 2>/dev/null | grep -q 'rd_rearm_batch'"
if command -v mandoc >/dev/null; then
	check "mandoc -Tlint: no warnings in the installed pages" \
		bash -c "! mandoc -Tlint -W warning '$usr'/share/man/man*/* 2>&1 | grep -q ."
fi
check "units and sysusers entry" test -n "$(find "$root" -path '*/system/readyd.socket')" -a \
	-n "$(find "$root" -path '*/system/readyd.service')" -a \
	-n "$(find "$root" -path '*/user/readyd.service')" -a \
	-n "$(find "$root" -path '*/sysusers.d/readyd.conf')"
check "ExecStart is /usr/sbin/readyd" \
	test "$(grep -h '^ExecStart=' $(find "$root" -name readyd.service) | sort -u)" = "ExecStart=/usr/sbin/readyd"

# 2. Build the example with pkg-config alone: no -I or -L of the source tree. (It uses
#    accept4, hence _GNU_SOURCE, as the project's own build defines it.)
#    Not exported: make's own pkg-config calls (for systemd's directories) must not see it.
pc() { PKG_CONFIG_LIBDIR=$libdir/pkgconfig PKG_CONFIG_PATH= PKG_CONFIG_SYSROOT_DIR=$root pkg-config "$@"; }
flags=$(pc --cflags --libs readyd)
check "pkg-config --modversion readyd is 1.0.0" test "$(pc --modversion readyd)" = 1.0.0
check "pkg-config --cflags --libs readyd: $flags" \
	test "$flags" = "-I$usr/include -L$libdir -lreadyd "
if ! (cd "$t" && cp "$here/examples/echo-server.c" . &&
	$cc -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -o echo-server echo-server.c $flags) > "$t/cc.log" 2>&1; then
	notok "$cc echo-server.c \$(pkg-config --cflags --libs readyd)"; cat "$t/cc.log"; exit 1
fi
ok "echo-server.c compiles and links against the installed tree"
check "echo-server needs libreadyd.so.1" \
	bash -c "readelf -d '$t/echo-server' | grep -q 'NEEDED.*\[libreadyd.so.1\]'"

# 3. Run it against the installed readyd.
sock=$t/readyd.sock
"$usr/sbin/readyd" --socket "$sock" --log-level warning 2> "$t/readyd.log" &
pids+=($!)
check "the installed readyd answers the installed readyctl" \
	wait_for 100 "$usr/bin/readyctl" --socket "$sock" status
LD_LIBRARY_PATH=$libdir "$t/echo-server" --socket "$sock" --port 0 > "$t/echo.out" 2>&1 &
echo_pid=$!
pids+=("$echo_pid")
wait_for 100 grep -q listening "$t/echo.out"
port=$(sed -n 's/^echo-server: listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$t/echo.out")
reply=
if [ -n "$port" ] && exec 3<>"/dev/tcp/127.0.0.1/$port"; then
	printf 'hello through readyd\n' >&3
	read -r -t 5 reply <&3
	exec 3>&-
fi
check "echo-server echoes a line over loopback (port ${port:-none})" test "$reply" = "hello through readyd"
check "echo-server runs on the staged libreadyd.so.1.0.0" \
	grep -q "$libdir/libreadyd.so.1.0.0" "/proc/$echo_pid/maps"
check "readyctl clients shows it" \
	bash -c "'$usr/bin/readyctl' --socket '$sock' clients | grep -q ' echo-server '"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
pids=()

# 4. Uninstall: nothing but (empty) directories stays.
mk "$root" PREFIX=/usr uninstall > "$t/uninstall.log" 2>&1 || { notok "make uninstall"; cat "$t/uninstall.log"; }
left=$(files_in "$root")
check "make uninstall leaves only directories${left:+ (left: $left)}" test -z "$left"

# 5. Another PREFIX and SBINDIR: the units start readyd where it went, readyd.pc says where
#    the library is; uninstall with the same variables removes it all.
opt=$t/opt
vars=(PREFIX=/opt/readyd SBINDIR=/opt/readyd/libexec)
mk "$opt" "${vars[@]}" install > "$t/install2.log" 2>&1 || { notok "make install ${vars[*]}"; cat "$t/install2.log"; }
check "ExecStart follows SBINDIR" \
	test "$(grep -h '^ExecStart=' $(find "$opt" -name readyd.service) | sort -u)" = "ExecStart=/opt/readyd/libexec/readyd" -a \
	-x "$opt/opt/readyd/libexec/readyd"
check "readyd.pc says prefix=/opt/readyd" grep -qx 'prefix=/opt/readyd' $(find "$opt" -name readyd.pc)
mk "$opt" "${vars[@]}" uninstall > "$t/uninstall2.log" 2>&1 || notok "make uninstall ${vars[*]}"
left=$(files_in "$opt")
check "and make uninstall removes it all${left:+ (left: $left)}" test -z "$left"

echo "install: $pass passed, $fail failed"
[ "$fail" = 0 ]
