#!/usr/bin/env bash
# Where readyd spends its time on the event path, in numbers that repeat on a noisy VM.
#
#   bench/profile.sh [BUILD_DIR [OUT_DIR]]      (default build, /tmp/readyd-profile)
#
# For each load of readyd-bench --profile (notify: one event per wakeup; throughput: one
# client, 1,000 then 10,000 ready; throughput100: the same over 100 clients; handoff:
# ADD 253 + DEL 253), it runs the load twice against a fresh daemon: once with count 0
# (setup only: connect, register, disconnect) and once with count N. Everything the
# daemon does for the load alone is the difference of the two, divided by the events
# (or fds) the load delivered:
#   - user-space instructions, from valgrind --tool=callgrind on the daemon (Ir), in
#     total and per function (self cost);
#   - syscalls by kind, context switches and CPU time, from perf stat's tracepoints on
#     the daemon's pid (skipped when perf cannot count them here).
set -euo pipefail

B=${1:-build}
OUT=${2:-/tmp/readyd-profile}
BENCH=$B/bin/readyd-bench
READYD=$B/bin/readyd
mkdir -p "$OUT"
[ -x "$BENCH" ] && [ -x "$READYD" ] || { echo "build first: make B=$B $BENCH $READYD" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }

LOADS=${LOADS:-"notify:2000 throughput:40 throughput100:20 handoff:40"}
SYSCALLS="epoll_wait epoll_pwait epoll_ctl sendmsg recvmsg sendto recvfrom getpeername close read write"
have_perf=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
	have_perf=1
fi

# Print "events" from a profile run's output line.
events_of() { sed -n 's/.* events_delivered \([0-9]*\).*/\1/p' "$1"; }
ir_of() { sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1"; }

for spec in $LOADS; do
	load=${spec%%:*}
	count=${spec#*:}
	for n in 0 "$count"; do
		"$BENCH" --readyd "$READYD" --profile "$load" --count "$n" \
			--daemon-wrap "valgrind --tool=callgrind --callgrind-out-file=$OUT/cg-$load-$n.out" \
			>"$OUT/cg-$load-$n.txt" 2>"$OUT/cg-$load-$n.log"
		callgrind_annotate --auto=no --threshold=100 "$OUT/cg-$load-$n.out" >"$OUT/cg-$load-$n.ann"
		if [ $have_perf = 1 ]; then
			ev="raw_syscalls:sys_enter,context-switches,task-clock"
			for s in $SYSCALLS; do ev="$ev,syscalls:sys_enter_$s"; done
			"$BENCH" --readyd "$READYD" --profile "$load" --count "$n" \
				--attach "perf stat -x , -e $ev -p {pid} -o $OUT/perf-$load-$n.csv" \
				>"$OUT/perf-$load-$n.txt" 2>/dev/null
		fi
	done
	evn=$(events_of "$OUT/cg-$load-$count.txt")
	ir0=$(ir_of "$OUT/cg-$load-0.out")
	irn=$(ir_of "$OUT/cg-$load-$count.out")
	unit=events; [ "$load" = handoff ] && unit="fds (ADD+DEL)"
	echo "== $load: count $count, $evn $unit"
	awk -v a="$ir0" -v b="$irn" -v e="$evn" \
		'BEGIN { printf "  callgrind: %.1f daemon instructions per %s (user space; %d - %d Ir)\n", (b - a) / e, "event", b, a }'
	echo "  top functions, instructions per event (self):"
	awk -v ev="$evn" '
		FNR == 1 { f++ }
		/^ *[0-9,]+ \( *[0-9.]+%\)  / {
			n = $1; gsub(/,/, "", n)
			name = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\)  /, "", name); sub(/ \[.*/, "", name)
			sub(/^.*\//, "", name)
			v[name] += (f == 1 ? -n : n)
		}
		END { for (k in v) if (v[k] / ev >= 0.5) printf "    %8.1f  %s\n", v[k] / ev, k }
	' "$OUT/cg-$load-0.ann" "$OUT/cg-$load-$count.ann" | sort -rn | head -14
	if [ $have_perf = 1 ]; then
		evp=$(events_of "$OUT/perf-$load-$count.txt")
		echo "  perf stat (native speed), per $evp events:"
		awk -F, -v ev="$evp" '
			FNR == 1 { f++ }
			/^[0-9.]+,/ { v[$3] += (f == 1 ? -$1 : $1) }
			END {
				for (k in v) {
					name = k; sub(/^syscalls:sys_enter_/, "", name)
					if (v[k] == 0) continue
					if (k == "task-clock")
						printf "    %-20s %10.1f ns per event\n", "cpu", v[k] * 1e6 / ev
					else
						printf "    %-20s %10.4f per event  (%d in all)\n", name, v[k] / ev, v[k]
				}
			}
		' "$OUT/perf-$load-0.csv" "$OUT/perf-$load-$count.csv" | sort
	fi
done
echo "raw data in $OUT"
