#!/usr/bin/env bash
# Memory at the breakdowns' default caps (issue 18): a simulated fleet of
# 2,500 agents in 50 teams x 50 environments on 4 providers/models, so that
# the task slices and agent groups both reach --breakdown.max-combinations
# (2000); the exporter with every default breakdown cap and
#   --breakdown.provider --breakdown.model --breakdown.agent-labels team,env
#   --storage.path <tmp>
# as separate release processes. Once the breakdown series stop growing it
# prints the exposition (bytes, series) and RSS at steady state, then stops
# the exporter (SIGTERM: a last checkpoint) and starts it again RUNS times,
# printing the peak RSS of each restore (VmHWM a while after ready) and the
# RSS once the restored exporter has synced again.
#   scripts/memory-breakdowns.sh                 (RUNS=3)
#   BIN=/path/to/clawmesh-exporter scripts/memory-breakdowns.sh
#                                                another build (before/after)
#   EXPORTER_ENV="MALLOC_ARENA_MAX=2" scripts/memory-breakdowns.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin clawmesh-exporter
  BIN=${CARGO_TARGET_DIR:-target}/release/clawmesh-exporter
fi
sim_port=${SIM_PORT:-18289}; exp_port=${EXP_PORT:-19927}
tmp=$(mktemp -d)
sim_pid=; exp_pid=
cleanup() { kill $sim_pid $exp_pid 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A rate limit high enough that the exporter's 10 % share reads the fleet's
# changes as they come, and enough changes that every combination of agent
# values soon has finished tasks.
$BIN simulate --listen 127.0.0.1:$sim_port --agents 2500 --teams 50 --envs 50 \
  --history-tasks 20000 --changes-per-minute 30000 --rate-limit 60000 --seed 7 >"$tmp/sim.log" 2>&1 &
sim_pid=$!
until curl -sf "http://127.0.0.1:$sim_port/_sim/ground_truth" >/dev/null; do sleep 0.2; done

start_exporter() {
  # shellcheck disable=SC2086
  env ${EXPORTER_ENV:-} CLAWMESH_API_KEY=sim-demo-key $BIN --api-url "http://127.0.0.1:$sim_port/v1" \
    --web.listen-address "127.0.0.1:$exp_port" --log.level warn \
    --breakdown.provider --breakdown.model --breakdown.agent-labels team,env \
    --storage.path "$tmp/storage" --storage.interval 15s >>"$tmp/exp.log" 2>&1 &
  exp_pid=$!
}
metric() { curl -sf "http://127.0.0.1:$exp_port/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v}'; }
mib() { awk -v f="$1" '$1 == f":" {printf "%.1f", $2/1024}' "/proc/$exp_pid/status"; }
wait_ready() { until curl -sf "http://127.0.0.1:$exp_port/readyz" >/dev/null; do sleep 0.2; done; }

start_exporter
wait_ready
# Steady: the breakdown series have not grown for a minute (at most 15 min).
last=-1; same=0; waited=0
while [ $same -lt 4 ] && [ $waited -lt 900 ]; do
  sleep 15; waited=$((waited + 15))
  now=$(metric 'clawmesh_breakdown_series{workspace="ws_sim"}')
  if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
done
curl -s "http://127.0.0.1:$exp_port/metrics" >"$tmp/metrics.txt"
echo "breakdown series: $last (steady after ${waited}s)"
echo "exposition: $(wc -c <"$tmp/metrics.txt") bytes, $(grep -vc '^#' "$tmp/metrics.txt") series, $(curl -s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$exp_port/metrics" | wc -c) bytes gzipped"
echo "steady: RSS $(mib VmRSS) MiB, peak $(mib VmHWM) MiB"

for i in $(seq "$runs"); do
  kill -TERM $exp_pid; wait $exp_pid 2>/dev/null || true
  start_exporter
  wait_ready
  sleep 5
  restore_peak=$(mib VmHWM)
  sleep 40   # a few syncs and a checkpoint after the restore
  echo "restart $i: restore peak $restore_peak MiB; 45 s later RSS $(mib VmRSS) MiB, peak $(mib VmHWM) MiB, checkpoint $(metric 'clawmesh_exporter_checkpoint_size_bytes{workspace="ws_sim"}') bytes"
done
