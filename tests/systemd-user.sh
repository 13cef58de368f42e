#!/usr/bin/env bash
# readyd under a real systemd: a user manager in a private mount namespace (DESIGN.md,
# "Testing with a real systemd"), running the units from systemd/user/ with ExecStart
# pointed at the build. Cases: activation on the first connect, READY and STATUS seen
# by systemctl, and a watchdog restart of a stalled daemon.
#
#   tests/systemd-user.sh [BUILD_DIR]
#
# Prints SKIP and the reason where the machine cannot run it (not root, no systemd).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)

# Skipped on a developer's machine that cannot run it; under CI (CI=true) a skip is a
# failure, so that the suite cannot pass there without having run.
skip() {
	echo "SKIP: systemd-user: $*"
	[ -z "${CI:-}" ] || { echo "not ok - systemd-user: skipped under CI"; exit 1; }
	exit 0
}

if [ "${READYD_SD_INNER:-}" != 1 ]; then
	[ "$(id -u)" = 0 ] || skip "needs root (a private mount namespace and a cgroup of its own)"
	command -v systemd >/dev/null || [ -x /lib/systemd/systemd ] || skip "systemd is not installed"
	command -v unshare >/dev/null || skip "unshare is not installed"
	if [ -d /sys/fs/cgroup/systemd ]; then
		cg=/sys/fs/cgroup/systemd/readyd-test-$$
	elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		cg=/sys/fs/cgroup/readyd-test-$$
	else
		skip "no systemd cgroup hierarchy to run a user manager in"
	fi
	mkdir -p "$cg" || skip "cannot create cgroup $cg"
	READYD_SD_INNER=1 READYD_SD_CGROUP=$cg unshare -m "$0" "$build"
	rc=$?
	# Everything the manager started is gone with it; the cgroup is empty again.
	for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
	rmdir "$cg" 2>/dev/null
	exit $rc
fi

# Inside the namespace: our own /run, our own cgroup, our own user manager.
mount --make-rprivate / 2>/dev/null
mount -t tmpfs tmpfs /run || { echo "not ok - cannot mount a private /run"; exit 1; }
mkdir -p /run/systemd/system /run/user/0 && chmod 700 /run/user/0
echo $$ > "$READYD_SD_CGROUP/cgroup.procs"
export XDG_RUNTIME_DIR=/run/user/0
HOME=$(mktemp -d) && export HOME
units=$HOME/.config/systemd/user
mkdir -p "$units/readyd.service.d"
for u in readyd.socket readyd.service; do
	sed "s|/usr/sbin/readyd|$build/bin/readyd|" "$here/systemd/user/$u" > "$units/$u"
done
# The tests restart quickly, and give readyd a config file of their own (the host's
# /etc is not ours to write).
printf '{"limits": {"registrations_per_client": 4096}}\n' > "$HOME/readyd.json"
# The unit's own 10 s watchdog: a loaded machine (CI) must not trip it by accident.
printf '[Service]\nRestartSec=100ms\nExecStart=\nExecStart=%s --config %s\n' \
	"$build/bin/readyd" "$HOME/readyd.json" > "$units/readyd.service.d/test.conf"

sdbin=$(command -v systemd || echo /lib/systemd/systemd)
"$sdbin" --user > "$HOME/manager.log" 2>&1 &
manager=$!
trap 'kill "$manager" 2>/dev/null; wait "$manager" 2>/dev/null; rm -rf "$HOME"' EXIT

pass=0 fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
notok() { echo "not ok - $*"; fail=$((fail + 1)); }
# wait_for N COMMAND...: retry COMMAND up to N times, 100 ms apart.
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
prop() { systemctl --user show readyd.service -p "$1" --value; }
status_has() { prop StatusText | grep -q "$1"; }
is_active() { [ "$(prop ActiveState)" = active ]; }
replaced() { local p; p=$(prop MainPID); [ "$p" != "$1" ] && [ "$p" != 0 ]; }
sock=/run/user/0/readyd.sock

wait_for 100 systemctl --user is-system-running || { echo "not ok - user manager did not start"; cat "$HOME/manager.log"; exit 1; }
systemctl --user daemon-reload
systemctl --user start readyd.socket

# 1. Socket activation on the first connect.
if [ "$(prop ActiveState)" = inactive ] && [ -S "$sock" ] &&
	"$build/bin/readyctl" --socket "$sock" status >/dev/null &&
	wait_for 50 is_active; then
	ok "the first connect starts readyd.service"
else
	notok "socket activation (state $(prop ActiveState))"
fi

# 2. READY and STATUS as systemctl sees them, following a client that holds one
#    registration (the echo server registers its listening socket).
"$build/bin/echo-server" --socket "$sock" --port 0 > "$HOME/echo.out" &
echo_pid=$!
if wait_for 150 status_has "Serving 1 client, 1 registration" &&
	systemctl --user status readyd.service --no-pager | grep -q 'Status: "Serving 1 client'; then
	ok "READY=1 and STATUS= in systemctl --user status"
else
	notok "status text: '$(prop StatusText)'; echo-server said: $(cat "$HOME/echo.out")"
fi
kill "$echo_pid"; wait "$echo_pid" 2>/dev/null

# 3. A stalled loop misses its keep-alive: the watchdog kills readyd and systemd starts
#    it again, and the socket keeps serving.
old=$(prop MainPID)
# Never "kill 0" (the whole process group, this script included): a real pid or nothing.
case $old in ''|0|1|*[!0-9]*) old= ;; esac
[ -n "$old" ] && kill -STOP "$old"
if [ -n "$old" ] && wait_for 400 replaced "$old" &&
	wait_for 50 "$build/bin/readyctl" --socket "$sock" status &&
	[ "$(prop NRestarts)" -ge 1 ]; then
	ok "watchdog restarts a stalled daemon (pid $old -> $(prop MainPID))"
else
	notok "watchdog restart (MainPID $(prop MainPID), was $old, NRestarts $(prop NRestarts))"
	systemctl --user status readyd.service --no-pager | tail -5
fi
[ -n "$old" ] && kill -9 "$old" 2>/dev/null

# 4. A config reload with a broken file: systemctl reload goes through, readyd stays up
#    on the old configuration; a good file then applies.
pid=$(prop MainPID)
printf '{"limits": {"registrations_per_client": 12,}}\n' > "$HOME/readyd.json"
systemctl --user reload readyd.service
limits=$("$build/bin/readyctl" --socket "$sock" --json limits)
if [ "$(prop MainPID)" = "$pid" ] && is_active && echo "$limits" | grep -q '"registrations_per_client":4096' &&
	! "$build/bin/readyctl" --socket "$sock" reload 2>/dev/null; then
	printf '{"limits": {"registrations_per_client": 12}}\n' > "$HOME/readyd.json"
	systemctl --user reload readyd.service
	if "$build/bin/readyctl" --socket "$sock" --json limits | grep -q '"registrations_per_client":12'; then
		ok "a bad config on reload keeps the old one; a good one applies"
	else
		notok "good config after a bad one did not apply"
	fi
else
	notok "reload with a bad config (MainPID $(prop MainPID), was $pid; $limits)"
fi
printf '{"limits": {"registrations_per_client": 4096}}\n' > "$HOME/readyd.json"
systemctl --user reload readyd.service

# load_run NAME ACTION: 50 clients x 100 registrations; ACTION disturbs the daemon while
# the fds are made ready; then every token must be reported and every registration
# answer. Prints the load client's verdict.
load_run() {
	local fifo=$HOME/load.$1 out=$HOME/load.$1.out
	mkfifo "$fifo"
	"$build/tests/load-client" "$sock" 50 100 < "$fifo" > "$out" 2>&1 &
	local lp=$!
	exec 7> "$fifo"
	wait_for 300 grep -q ready "$out" || { echo "load client did not start: $(cat "$out")"; }
	"$2"
	echo write >&7
	echo check >&7
	exec 7>&-
	for _ in $(seq 300); do kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
	kill "$lp" 2>/dev/null
	wait "$lp" 2>/dev/null
	tail -1 "$out"
}

# 5. Live upgrade under load: same pid, no client reconnects, nothing lost.
do_upgrade() { "$build/bin/readyctl" --socket "$sock" upgrade > "$HOME/upgrade.out" 2>&1; }
pid=$(prop MainPID)
verdict=$(load_run upgrade do_upgrade)
if [ "$verdict" = "ok clients=50 regs=100 reconnected=0" ] && [ "$(prop MainPID)" = "$pid" ] &&
	grep -q "upgraded: readyd" "$HOME/upgrade.out"; then
	ok "live upgrade under load: zero disconnects, pid $pid kept"
else
	notok "live upgrade under load: $verdict; $(cat "$HOME/upgrade.out"); MainPID $(prop MainPID) was $pid"
	grep -i "readyd" "$HOME/manager.log" | tail -15
fi

# 6. kill -9 under load: systemd restarts readyd, which adopts the stored connections and
#    has every client resync; no client reconnects, every registration is live again,
#    every fd made ready during the outage is reported.
do_kill() { # the writes follow within the 100 ms restart delay
	local p
	p=$(prop MainPID)
	case $p in ''|0|1|*[!0-9]*) return ;; esac
	kill -9 "$p"
}
verdict=$(load_run crash do_kill)
if [ "$verdict" = "ok clients=50 regs=100 reconnected=0" ] && [ "$(prop NRestarts)" -ge 2 ]; then
	ok "kill -9 under load: every connection kept in the fd store, every registration back"
else
	notok "kill -9 under load: $verdict (NRestarts $(prop NRestarts))"
	systemctl --user status readyd.service --no-pager | tail -8
fi

systemctl --user stop readyd.socket readyd.service
echo "systemd-user: $pass passed, $fail failed"
[ "$fail" = 0 ]
