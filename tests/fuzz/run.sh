#!/usr/bin/env bash
# Run one libFuzzer harness: replay its seed corpus, then fuzz for SECONDS, growing the
# corpus in WORKDIR/corpus (the seeds stay as they are) and keeping any crash in
# WORKDIR/crashes. Prints the execs/s and total execs; on a crash, the report's tail and
# the reproducer's path, and fails.
#   tests/fuzz/run.sh BIN SEEDS WORKDIR SECONDS
set -euo pipefail
bin=$1 seeds=$2 work=$3 secs=$4
name=$(basename "$bin")
mkdir -p "$work/corpus" "$work/crashes"
opts=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/crashes/")

fail() {
	echo "$name: $1 (log: $work/$2)"
	grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz-|.*runtime error)' "$work/$2" | head -5 || true
	tail -n 25 "$work/$2"
	ls "$work/crashes"/* 2>/dev/null | sed 's/^/reproducer: /' || true
	exit 1
}

# Every seed, once: a regression test.
"$bin" "${opts[@]}" -runs=0 "$seeds" >"$work/replay.log" 2>&1 || fail "a seed fails" replay.log
echo "$name: $(find "$seeds" -type f | wc -l) seeds replayed"

"$bin" "${opts[@]}" -max_total_time="$secs" -print_final_stats=1 "$work/corpus" "$seeds" \
	>"$work/fuzz.log" 2>&1 || fail "found a bug" fuzz.log
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/fuzz.log")
cov=$(grep -o 'cov: [0-9]*' "$work/fuzz.log" | tail -1)
echo "$name: ${secs} s, $execs execs, $rate execs/s, $cov, corpus $(ls "$work/corpus" | wc -l) units"
