#!/usr/bin/env bash
# Load scenario "10k": a simulated fleet of 10,000 agents, 100,000 tasks in
# history and 1,000 task changes per minute; the exporter with default
# settings against it, as separate release processes. Prints what the
# exporter spends (API requests per minute, CPU per poll cycle, RSS) and the
# /metrics latency under 50 concurrent scrapers (wrk).
#   scripts/load-10k.sh [minutes]      (default 5)
#   WEBHOOKS=1 scripts/load-10k.sh 4   the same with the simulator delivering
#                                      webhooks to the exporter's receiver
#   EXPORTER_FLAGS="--breakdown.provider --breakdown.model --breakdown.agent-labels team,env" \
#     SIM_PORT=18189 EXP_PORT=19917 scripts/load-10k.sh 4
#                                      with breakdowns, on other ports (two
#                                      runs side by side)
#   STORAGE=1 scripts/load-10k.sh 3    with checkpoints (--storage.path in a
#                                      temporary directory): their size, write
#                                      time and the bytes the process wrote
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-5}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/clawmesh-exporter
sim_port=${SIM_PORT:-18089}; exp_port=${EXP_PORT:-19817}
# shellcheck disable=SC2206
extra_flags=(${EXPORTER_FLAGS:-})
tmp=$(mktemp -d)
cleanup() { kill "$sim_pid" "$exp_pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

$bin simulate --listen 127.0.0.1:$sim_port --agents 10000 --history-tasks 100000 \
  --changes-per-minute 1000 --seed 7 >"$tmp/sim.log" 2>&1 &
sim_pid=$!
until curl -sf "http://127.0.0.1:$sim_port/_sim/ground_truth" >/dev/null; do sleep 0.2; done

if [ "${STORAGE:-0}" = 1 ]; then
  extra_flags+=(--storage.path "$tmp/storage")
fi
webhook_flags=()
if [ "${WEBHOOKS:-0}" = 1 ]; then
  printf 'whsec_load_10k\n' >"$tmp/whsec"
  webhook_flags=(--webhook.secret-file "$tmp/whsec")
fi
CLAWMESH_API_KEY=sim-demo-key $bin --api-url "http://127.0.0.1:$sim_port/v1" \
  --web.listen-address "127.0.0.1:$exp_port" --log.level warn "${webhook_flags[@]}" "${extra_flags[@]}" >"$tmp/exp.log" 2>&1 &
exp_pid=$!
until curl -sf "http://127.0.0.1:$exp_port/readyz" >/dev/null; do sleep 0.5; done
if [ "${WEBHOOKS:-0}" = 1 ]; then
  curl -sf -X POST -H 'content-type: application/json' \
    -d "{\"url\": \"http://127.0.0.1:$exp_port/webhooks/clawmesh\", \"secret\": \"whsec_load_10k\"}" \
    "http://127.0.0.1:$sim_port/_sim/webhooks" >/dev/null
fi
ready_at=$(date +%s.%N)

requests() { curl -sf "http://127.0.0.1:$sim_port/_sim/ground_truth" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_by_key"].get("key_sim_demo",0))'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$exp_pid/stat"; }
syncs() { curl -sf "http://127.0.0.1:$exp_port/metrics" | awk '/^clawmesh_api_requests_total/ {n+=$2} END {print n+0}'; }

written() { awk '/^write_bytes/ {print $2}' "/proc/$exp_pid/io"; }
r0=$(requests); c0=$(cpu_ticks); w0=$(written)
sleep $((minutes * 60))   # the measurement window
r1=$(requests); c1=$(cpu_ticks); w1=$(written)
t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
cycles=$(python3 -c "print(int(($t1-$ready_at)/15))")
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$exp_pid/status")
hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$exp_pid/status")

wrk -t2 -c50 -d30s --latency "http://127.0.0.1:$exp_port/metrics" >"$tmp/wrk.txt"
p50=$(awk '/^ +50%/ {print $2}' "$tmp/wrk.txt"); p99=$(awk '/^ +99%/ {print $2}' "$tmp/wrk.txt")
rps=$(awk '/^Requests\/sec/ {print $2}' "$tmp/wrk.txt")
bytes=$(curl -s "http://127.0.0.1:$exp_port/metrics" | wc -c)
series=$(curl -s "http://127.0.0.1:$exp_port/metrics" | grep -vc '^#')
echo "series in /metrics: $series"
if [ "${STORAGE:-0}" = 1 ]; then
  curl -s "http://127.0.0.1:$exp_port/metrics" | grep '^clawmesh_exporter_checkpoint_'
  python3 -c "import sys; print(f'| bytes written to disk by the exporter | {(int(sys.argv[2])-int(sys.argv[1]))/1e6/$minutes:.2f} MB per minute |')" "$w0" "$w1"
fi

python3 - "$r0" "$r1" "$c0" "$c1" "$hz" "$ready_at" "$t1" "$cycles" "$rss_kib" "$hwm_kib" "$p50" "$p99" "$rps" "$bytes" <<'PY'
import sys
r0,r1,c0,c1,hz,t0,t1,cycles,rss,hwm=map(float,sys.argv[1:11]); p50,p99,rps,size=sys.argv[11:15]
mins=(t1-t0)/60
print(f"| window | {mins:.1f} min after ready |")
print(f"| API requests per minute | {(r1-r0)/mins:.1f} |")
print(f"| exporter CPU | {(c1-c0)/hz:.2f} s in the window, {(c1-c0)/hz/max(cycles,1)*1000:.1f} ms per 15 s poll cycle |")
print(f"| RSS | {rss/1024:.1f} MiB now, {hwm/1024:.1f} MiB peak |")
print(f"| /metrics, 50 concurrent scrapers (wrk, 30 s) | median {p50}, p99 {p99}, {rps} req/s, {int(size)} bytes |")
PY
