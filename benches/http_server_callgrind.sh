#!/usr/bin/env bash
# Instructions per request of `bench_http`'s server process alone, delivery of the pageviews
# included (its client's worker, encoding and HTTP to the sink run in that process): the
# server runs under callgrind, the sink and `wrk` outside it, and the total is divided by the
# responses the server reports. Start-up and shutdown add about 1.1 million instructions,
# under 20 per request at the counts this reaches.
#
#   cargo build --release --features axum --example bench_http
#   benches/http_server_callgrind.sh target/release/examples/bench_http pageviews [SECONDS] [OUT]
#
# MODE is one of bench_http's (`bare`, `noop`, `layer`, `layer_no_exceptions`, `outer`,
# `pageviews`); SECONDS of `wrk -t1 -c16` (default 15); OUT keeps the callgrind file for
# `callgrind_annotate`. Needs valgrind and wrk.
set -euo pipefail
bin=$1
mode=$2
seconds=${3:-15}
out=${4:-$(mktemp)}
dir=$(mktemp -d)
trap 'exec 3>&- 5>&- 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
mkfifo "$dir/sink_in" "$dir/sink_out" "$dir/server_in" "$dir/server_out"

"$bin" --sink <"$dir/sink_in" >"$dir/sink_out" &
exec 3>"$dir/sink_in"
read -r sink_port <"$dir/sink_out"

valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --serve "$mode" "$sink_port" 1 0 \
    <"$dir/server_in" >"$dir/server_out" 2>"$dir/valgrind" &
server=$!
exec 5>"$dir/server_in"
exec 4<"$dir/server_out"
read -r port <&4

wrk -t1 -c16 -d"${seconds}s" "http://127.0.0.1:$port/" >/dev/null
# Closing its stdin stops the server: it shuts its client down and prints its report.
exec 5>&-
read -r report <&4
wait "$server"
exec 3>&-

responses=$(grep -oE 'responses=[0-9]+' <<<"$report" | cut -d= -f2)
total=$(grep -E 'Collected' "$dir/valgrind" | tr -d ',' | awk '{print $NF}')
echo "$mode: $responses responses, $((total / responses)) instructions per request ($report)"
