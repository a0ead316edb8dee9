#!/usr/bin/env bash
# Instructions per first read of a flag from a snapshot (the flag events built, not queued):
# runs one `benches/flags.rs` bench under callgrind, counting only inside
# `FlagCalledBench::access`, and divides by the number of reads.
#
#   cargo bench --bench flags --no-run
#   benches/flag_events_callgrind.sh target/release/deps/flags-<hash> first_access_event_build_only
#   benches/flag_events_callgrind.sh target/release/deps/flags-<hash> first_access_experiment_build_only
set -euo pipefail
bin=$1
bench=$2
out=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='*FlagCalledBench*access*' \
    "$bin" --bench --profile-time 1 "$bench" >/dev/null 2>&1
python3 - "$out" "$bench" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
names = {}
for line in lines:
    m = re.match(r'c?fn=\((\d+)\)(?: (.*))?', line)
    if m and m.group(2):
        names[m.group(1)] = m.group(2)
calls = cost = 0
for i, line in enumerate(lines):
    m = re.match(r'cfn=\((\d+)\)', line)
    if m and 'FlagCalledBench::access' in names.get(m.group(1), ''):
        calls += int(re.match(r'calls=(\d+)', lines[i + 1]).group(1))
        cost += int(lines[i + 2].split()[1])
print(f"{sys.argv[2]}: {calls} reads, {round(cost / max(calls, 1))} instructions per read")
PY
rm -f "$out"
