#!/usr/bin/env bash
# Memory at the breakdowns' default caps (issue 18): a simulated fleet of
# 2,500 agents in 50 teams x 50 environments on 4 providers/models, so that
# the task slices and agent groups both reach --breakdown.max-combinations
# (2000); the exporter with every default breakdown cap and
#   --breakdown.provider --breakdown.model --breakdown.agent-labels team,env
#   --storage.path <tmp>
# as separate release processes. After MINUTES (default 5) it prints, per
# exporter, the exposition (bytes, series, gzip) and RSS; then it stops each
# exporter (SIGTERM: a last checkpoint) and starts it again RUNS times,
# printing the peak RSS of each restore (VmHWM 5 s after ready) and RSS and
# peak 40 s later.
#   scripts/memory-breakdowns.sh                       this tree's build
#   BINS="/tmp/before /tmp/after" scripts/memory-breakdowns.sh
#       several builds side by side against the same simulator, each with its
#       own checkpoint directory, started together: same fleet, same ledger
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}; minutes=${MINUTES:-5}
if [ -z "${BINS:-}" ]; then
  cargo build --release --quiet --bin clawmesh-exporter
  BINS=${CARGO_TARGET_DIR:-target}/release/clawmesh-exporter
fi
read -r -a bins <<<"$BINS"
sim_port=${SIM_PORT:-18289}; exp_port=${EXP_PORT:-19927}
tmp=$(mktemp -d)
sim_pid=; pids=()
cleanup() { kill $sim_pid "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A rate limit high enough that the exporter's share reads the fleet's
# changes as they come, and enough changes that every combination of agent
# values soon has finished tasks.
${bins[0]} simulate --listen 127.0.0.1:$sim_port --agents 2500 --teams 50 --envs 50 \
  --history-tasks 20000 --changes-per-minute 6000 --rate-limit 60000 --seed 7 >"$tmp/sim.log" 2>&1 &
sim_pid=$!
until curl -sf "http://127.0.0.1:$sim_port/_sim/ground_truth" >/dev/null; do sleep 0.2; done

start() { # index
  local i=$1
  CLAWMESH_API_KEY=sim-demo-key ${bins[$i]} --api-url "http://127.0.0.1:$sim_port/v1" \
    --web.listen-address "127.0.0.1:$((exp_port + i))" --log.level warn \
    --breakdown.provider --breakdown.model --breakdown.agent-labels team,env \
    --storage.path "$tmp/storage$i" --storage.interval 15s >>"$tmp/exp$i.log" 2>&1 &
  pids[$i]=$!
}
url() { echo "http://127.0.0.1:$((exp_port + $1))"; }
metric() { curl -sf "$(url "$1")/metrics" | awk -v m="$2" '$1 == m {v = $2} END {print v}'; }
mib() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2/1024}' "/proc/${pids[$1]}/status"; }
wait_ready() { until curl -sf "$(url "$1")/readyz" >/dev/null; do sleep 0.2; done; }

for i in "${!bins[@]}"; do start "$i"; done
for i in "${!bins[@]}"; do wait_ready "$i"; done
sleep $((minutes * 60))
for i in "${!bins[@]}"; do
  curl -s "$(url "$i")/metrics" >"$tmp/metrics.txt"
  echo "== ${bins[$i]}"
  echo "exposition: $(wc -c <"$tmp/metrics.txt") bytes, $(grep -vc '^#' "$tmp/metrics.txt") series ($(metric "$i" 'clawmesh_breakdown_series{workspace="ws_sim"}') from breakdowns), $(curl -s -H 'Accept-Encoding: gzip' "$(url "$i")/metrics" | wc -c) bytes gzipped; tasks held $(metric "$i" 'clawmesh_exporter_tracked_tasks{workspace="ws_sim",state="finished"}')"
  echo "steady after $minutes min: RSS $(mib "$i" VmRSS) MiB, peak $(mib "$i" VmHWM) MiB"
done

for r in $(seq "$runs"); do
  for i in "${!bins[@]}"; do kill -TERM "${pids[$i]}"; wait "${pids[$i]}" 2>/dev/null || true; start "$i"; done
  for i in "${!bins[@]}"; do wait_ready "$i"; done
  sleep 5
  for i in "${!bins[@]}"; do restore[$i]=$(mib "$i" VmHWM); done
  sleep 40   # a few syncs and a checkpoint after the restore
  for i in "${!bins[@]}"; do
    echo "restart $r, ${bins[$i]}: restore peak ${restore[$i]} MiB; 45 s later RSS $(mib "$i" VmRSS) MiB, peak $(mib "$i" VmHWM) MiB, checkpoint $(metric "$i" 'clawmesh_exporter_checkpoint_size_bytes{workspace="ws_sim"}') bytes"
  done
done
