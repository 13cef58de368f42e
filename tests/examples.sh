#!/usr/bin/env bash
# The examples of the three uses that need more than libc, run against a real readyd on a
# temporary socket:
#   - sandboxed-worker: the seccomp filter is in force in the worker (epoll_create1 and
#     open fail with EPERM, /proc says Seccomp: 2), the worker holds only stdio, its
#     readyd connection and its listener, and it still echoes over loopback; again
#     under --strict, where any call outside the allow-list of libreadyd(3) ends it;
#   - libuv-client and libevent-client: every socket pair served through readyd; and
#     again with readyd killed and started anew mid-game: they reconnect and finish.
# Afterwards the daemon is back to its idle fd count: nothing of theirs is left in it.
#
#   tests/examples.sh [BUILD_DIR]      (BUILD_DIR as make's B, relative to the tree)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$here" && cd "${1:-build}/bin" && pwd) || exit 1

t=$(mktemp -d /tmp/readyd-examples-XXXXXX)
pids=()
cleanup() {
	# Only what this script started (and the workers they started), by pid.
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$t"
}
trap cleanup EXIT
# forget PID: it was waited for; its number may be reused, so cleanup must not kill it.
forget() { local i; for i in "${!pids[@]}"; do [ "${pids[$i]}" = "$1" ] && unset "pids[$i]"; done; }

pass=0 fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
notok() { echo "not ok - $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else notok "$what"; fi; }
# wait_for N COMMAND...: retry COMMAND up to N times, 100 ms apart.
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
fds_are() { [ "$(fds "$1")" = "$2" ]; }
gone() { [ ! -e "/proc/$1" ]; }
# echo_line PORT LINE: send LINE over TCP to 127.0.0.1:PORT, print what comes back.
echo_line() {
	local reply=
	if { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
		printf '%s\n' "$2" >&3
		read -r -t 5 reply <&3
		exec 3>&-
	fi
	printf '%s' "$reply"
}

sock=$t/readyd.sock
printf '{}\n' > "$t/readyd.json" # not the host's /etc/readyd/readyd.json
start_daemon() {
	"$bin/readyd" --socket "$sock" --config "$t/readyd.json" --log-level warning 2>> "$t/readyd.log" &
	daemon=$!
	pids+=("$daemon")
	if ! wait_for 100 "$bin/readyctl" --socket "$sock" status; then
		echo "not ok - readyd did not start"; cat "$t/readyd.log"; exit 1
	fi
}
start_daemon
# Idle: readyctl's connection is gone once the count stops changing.
idle=$(fds "$daemon")
for _ in $(seq 20); do sleep 0.05; n=$(fds "$daemon"); [ "$n" = "$idle" ] && break; idle=$n; done

# run_worker TAG [FLAGS...]: start sandboxed-worker and check it; the parent is killed
# at the end, which ends the worker.
run_worker() {
	local tag=$1 out=$t/$1.out err=$t/$1.err name="sandboxed-worker${2:+ $2}"
	shift
	"$bin/sandboxed-worker" --socket "$sock" --port 0 --check-sandbox "$@" > "$out" 2> "$err" &
	local parent=$!
	pids+=("$parent")
	if ! wait_for 100 grep -q 'worker serving through readyd' "$out"; then
		notok "$name: the worker did not start serving"; cat "$out" "$err"
		return
	fi
	local port wpid
	port=$(sed -n 's/^sandboxed-worker: listening on 127\.0\.0\.1:\([0-9]*\), worker pid [0-9]*$/\1/p' "$out")
	wpid=$(sed -n 's/^sandboxed-worker: listening on .*, worker pid \([0-9]*\)$/\1/p' "$out")
	[ -n "$wpid" ] && pids+=("$wpid")
	check "$name: the filter is in force (sandbox: epoll_create1 EPERM, open EPERM)" \
		grep -qx 'sandbox: epoll_create1 EPERM, open EPERM' "$out"
	check "$name: the worker runs under a seccomp filter with no_new_privs" \
		bash -c "grep -q '^Seccomp:[[:space:]]*2$' /proc/$wpid/status && grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/$wpid/status"
	check "$name: the worker holds only stdio, its readyd connection and its listener" \
		test "$(ls "/proc/$wpid/fd" 2>/dev/null | sort -n | tr '\n' ' ')" = "0 1 2 3 4 "
	check "$name: a TCP client gets its line echoed by the worker (port ${port:-none})" \
		test "$(echo_line "$port" "hello from $name")" = "hello from $name"
	check "$name: and a second client too" \
		test "$(echo_line "$port" "again, $name")" = "again, $name"
	check "$name: nothing on the worker's stderr" test ! -s "$err"
	kill "$parent" 2>/dev/null
	wait "$parent"
	local rc=$?
	check "$name: the parent exits 0 on SIGTERM (got $rc)" test "$rc" = 0
	check "$name: and the worker is gone with it" wait_for 50 gone "$wpid"
	if [ -s "$err" ]; then cat "$err"; fi
}
# succeeded NAME RC OUTPUT: exit 0 and the success line.
succeeded() {
	[ "$2" = 0 ] && grep -q "^$1: 4 socket pairs served through readyd, 3 rounds each, .*, 0 reconnections$" <<< "$3"
}
restarted() {
	[ "$2" = 0 ] && grep -q "^$1: 4 socket pairs served through readyd, 20000 rounds each, .*, 1 reconnection$" <<< "$3"
}
registrations_are() {
	[ "$("$bin/readyctl" --socket "$sock" --json status 2>/dev/null |
		sed -n 's/.*"registrations":\([0-9]*\).*/\1/p')" = "$1" ]
}

run_worker deny
run_worker strict --strict
check "sandboxed-worker --strict: the worker says so" grep -q 'serving through readyd (strict)' "$t/strict.out"

for c in libuv-client libevent-client; do
	out=$(timeout 30 "$bin/$c" --socket "$sock" 2>&1)
	rc=$?
	check "$c exits 0 with its success line (exit $rc: $out)" succeeded "$c" "$rc" "$out"
done

check "readyd is back to its idle fd count ($idle)" wait_for 50 fds_are "$daemon" "$idle"

# readyd killed in the middle of a game and started again on the same socket, with no fd
# store to keep the connections: the library connects again by path and replays the 8
# registrations. The new socket has the old fd number, but the loop's epoll forgot the
# old one: the examples watch it again, or the game stalls and times out.
for c in libuv-client libevent-client; do
	"$bin/$c" --socket "$sock" --rounds 20000 > "$t/$c-restart.out" 2>&1 &
	cpid=$!
	pids+=("$cpid")
	check "$c --rounds 20000: its 8 registrations are in readyd" wait_for 100 registrations_are 8
	kill -KILL "$daemon"
	wait "$daemon" 2>/dev/null
	forget "$daemon"
	start_daemon
	wait "$cpid"
	rc=$?
	forget "$cpid"
	out=$(cat "$t/$c-restart.out")
	check "$c finishes its game across a restart of readyd, reconnected once (exit $rc: $out)" \
		restarted "$c" "$rc" "$out"
done
check "the restarted readyd is back to the idle fd count ($idle)" wait_for 50 fds_are "$daemon" "$idle"
kill "$daemon"
wait "$daemon"
check "readyd exits 0 on SIGTERM" test $? = 0
pids=()

echo "examples: $pass passed, $fail failed"
[ "$fail" = 0 ]
