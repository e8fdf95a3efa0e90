#!/usr/bin/env bash
# Load scenario "auth flood": the exporter with basic auth (one user, bcrypt
# cost 10) and default flags, against the simulator's default fleet, as
# separate release processes. Measures a cached, authorized scrape (wrk, one
# connection, gzip as Prometheus asks) without a flood, then while 600
# connections send wrong passwords as fast as they are answered, side by
# side; and /healthz during the flood.
#   scripts/auth-flood.sh [seconds]      (default 30, per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --release --quiet --bin clawmesh-exporter
bin=${CARGO_TARGET_DIR:-target}/release/clawmesh-exporter
sim_port=18189; exp_port=19917
tmp=$(mktemp -d)
cleanup() { kill "$sim_pid" "$exp_pid" "${flood_pid:-}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

$bin simulate --listen 127.0.0.1:$sim_port --seed 7 >"$tmp/sim.log" 2>&1 &
sim_pid=$!
until curl -sf "http://127.0.0.1:$sim_port/_sim/ground_truth" >/dev/null; do sleep 0.2; done

# "correct horse", cost 10 (htpasswd -nbBC 10 prometheus 'correct horse').
hash='$2b$10$kHVleuJT92BF0k9xuue4C.f9ZbVgm4DYlZ9bQTwH.oh5tyhjOLKBO'
printf 'basic_auth_users:\n  prometheus: %s\n' "$hash" >"$tmp/web.yml"
CLAWMESH_API_KEY=sim-demo-key $bin --api-url "http://127.0.0.1:$sim_port/v1" \
  --web.listen-address "127.0.0.1:$exp_port" --web.config.file "$tmp/web.yml" \
  --log.level warn >"$tmp/exp.log" 2>&1 &
exp_pid=$!
until curl -sf "http://127.0.0.1:$exp_port/readyz" >/dev/null; do sleep 0.5; done

url="http://127.0.0.1:$exp_port"
good="Authorization: Basic $(printf 'prometheus:correct horse' | base64)"
bad="Authorization: Basic $(printf 'prometheus:wrong' | base64)"
curl -sf -H "$good" "$url/metrics" >/dev/null   # the first login; cached from here on
scrape() { wrk -t1 -c1 -d"${secs}s" --latency -H "$good" -H 'Accept-Encoding: gzip' "$url/metrics" >"$1"; }

scrape "$tmp/quiet.txt"
wrk -t2 -c600 -d"$((2 * secs + 10))s" -H "$bad" "$url/metrics" >"$tmp/flood.txt" &
flood_pid=$!
sleep 5
threads=$(awk '/^Threads/ {print $2}' "/proc/$exp_pid/status")
scrape "$tmp/flooded.txt"
wrk -t1 -c1 -d"${secs}s" --latency "$url/healthz" >"$tmp/healthz.txt"
wait "$flood_pid"
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$exp_pid/status")

python3 - "$tmp" "$threads" "$rss_kib" <<'PY'
import re, sys
tmp, threads, rss = sys.argv[1], sys.argv[2], int(sys.argv[3])
def us(v):
    n, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
def read(name):
    t = open(f"{tmp}/{name}.txt").read()
    pct = {p: us(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M)}
    reqs = int(re.search(r"(\d+) requests in", t).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errors = re.search(r"Socket errors: (.*)", t)
    return pct, reqs, int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else "none"
(q, qn, qbad, _), (f, fn, fbad, _), (h, hn, hbad, _) = read("quiet"), read("flooded"), read("healthz")
_, floodn, _, flooderr = read("flood")
print(f"| cached scrape, no flood | median {q['50']:.0f} µs, p99 {q['99']:.0f} µs, {qn} scrapes, {qbad} failed |")
print(f"| cached scrape, 600-connection wrong-password flood | median {f['50']:.0f} µs, p99 {f['99']:.0f} µs, {fn} scrapes, {fbad} failed |")
print(f"| ratio of the medians | {f['50'] / q['50']:.2f}x |")
print(f"| /healthz during the flood | median {h['50']:.0f} µs, p99 {h['99']:.0f} µs, {hn} requests, {hbad} failed |")
print(f"| the flood | {floodn} wrong-password requests answered (401 or 503), socket errors: {flooderr} |")
print(f"| exporter threads during the flood, peak RSS | {threads}, {rss / 1024:.1f} MiB |")
PY
