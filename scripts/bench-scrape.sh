#!/usr/bin/env bash
# /metrics under 50 concurrent scrapers, side by side with nginx serving the
# same bytes from a file (issue 20): each format (by Accept) and encoding
# (identity, gzip) at 10,000 agents with breakdowns on.
#
# The simulator (`simulate --agents 10000`, the "10k" scenario of
# scripts/load-10k.sh) and the exporter run as separate release processes on
# free loopback ports. Once /readyz is 200 and the body's size has settled,
# each (format, encoding) body is saved with curl, nginx is configured to
# serve exactly those bytes with the exporter's Content-Type and
# Content-Encoding, and `wrk -t2 -c50` runs against the exporter and nginx
# in alternating rounds (A/B/A/B...). Prints a markdown table of medians
# over the rounds, ready for BENCHMARKS.md.
#
#   scripts/bench-scrape.sh
#   DURATION=30 ROUNDS=5 scripts/bench-scrape.sh     longer rounds, more of them
#   BIN=/tmp/other-build scripts/bench-scrape.sh     a given binary, no cargo build
#   BREAKDOWNS="--breakdown.provider --breakdown.model" scripts/bench-scrape.sh
#   ONLY="text/identity gzip" scripts/bench-scrape.sh
#                       only the (format/encoding) pairs matching these words
#   NGINX_WORKERS=1 scripts/bench-scrape.sh          (default auto: see below)
#   CONNECTIONS=50 THREADS=2                         wrk's -c and -t
#   NGINX_SENDFILE=off scripts/bench-scrape.sh       nginx copying the bytes
#                       through user space as the exporter must (default on)
#
# Tools: wrk, nginx, curl, python3 (Debian: apt-get install -y wrk
# nginx-light curl python3). wrk, nginx and the exporter share the machine's
# cores: on a 2-core machine the figures are the three competing, for nginx
# as for the exporter, which is why only ratios taken side by side mean
# anything.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-50}
threads=${THREADS:-2}
# nginx with one worker per core (`auto`) is what the exporter has too: its
# tokio runtime runs one worker thread per core. One nginx worker would hand
# nginx half the machine and flatter the exporter.
nginx_workers=${NGINX_WORKERS:-auto}
# The breakdowns of issue 11's figures (the 335 KB body the issue quotes):
# 4 providers with one model each, 5 teams, 2 environments.
read -r -a breakdowns <<<"${BREAKDOWNS:---breakdown.provider --breakdown.model --breakdown.agent-labels team,env}"
only=${ONLY:-}
nginx_sendfile=${NGINX_SENDFILE:-on}

missing=()
for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-scrape: missing ${missing[*]}; install with:" >&2
  echo "  apt-get install -y wrk nginx-light curl python3" >&2
  exit 1
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet --bin clawmesh-exporter
  bin=${CARGO_TARGET_DIR:-target}/release/clawmesh-exporter
fi
# Taken now: a build during the run would change what the binary says.
version=$("$bin" --version | head -n1)

tmp=$(mktemp -d)
# nginx's workers drop to an unprivileged user when started as root: they
# must be able to read the bodies.
chmod 755 "$tmp"
sim_pid=; exp_pid=; nginx_pid=; wrk_pid=
cleanup() {
  local rc=$?
  for pid in $wrk_pid $nginx_pid $exp_pid $sim_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $wrk_pid $nginx_pid $exp_pid $sim_pid; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] && [ -d "$tmp" ]; then
    for log in "$tmp"/*.log; do
      [ -s "$log" ] && { echo "--- $log (last lines)" >&2; tail -n 5 "$log" >&2; }
    done
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Three free loopback ports (overridable), held open together so that they
# differ; a race with another program taking one is possible but unlikely.
read -r free1 free2 free3 < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
sim_port=${SIM_PORT:-$free1}; exp_port=${EXP_PORT:-$free2}; nginx_port=${NGINX_PORT:-$free3}
exp_url=http://127.0.0.1:$exp_port

"$bin" simulate --listen "127.0.0.1:$sim_port" --agents 10000 --history-tasks 100000 \
  --changes-per-minute 1000 --seed 7 >"$tmp/sim.log" 2>&1 &
sim_pid=$!
# Every wait is bounded: a process that died or never answers ends the run.
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local until=$((SECONDS + secs))
  until "$@"; do
    if [ $SECONDS -ge $until ]; then
      echo "bench-scrape: $what not within ${secs}s" >&2
      return 1
    fi
    sleep 0.5
  done
}
wait_for "the simulator answering" 60 curl -sf -o /dev/null "http://127.0.0.1:$sim_port/_sim/ground_truth"

CLAWMESH_API_KEY=sim-demo-key "$bin" --api-url "http://127.0.0.1:$sim_port/v1" \
  --web.listen-address "127.0.0.1:$exp_port" --log.level warn "${breakdowns[@]}" >"$tmp/exporter.log" 2>&1 &
exp_pid=$!
echo "bench-scrape: exporter on $exp_url, simulator on :$sim_port, waiting for /readyz" >&2
wait_for "/readyz 200 (the first complete sync at 10,000 agents)" 600 curl -sf -o /dev/null "$exp_url/readyz"

# The body grows while breakdown slices appear; it is settled when three
# samples one poll interval (15 s) apart are within 1 % of each other.
body_size() { curl -sf "$exp_url/metrics" | wc -c; }
prev=$(body_size); settled=0; until_settled=$((SECONDS + 600))
while [ $settled -lt 2 ]; do
  [ $SECONDS -lt $until_settled ] || { echo "bench-scrape: /metrics size not settled within 600 s" >&2; exit 1; }
  sleep 15 &
  wait $!   # a signal is handled at once, not after the sleep
  now=$(body_size)
  if [ $(((now > prev ? now - prev : prev - now) * 100)) -le "$prev" ]; then
    settled=$((settled + 1))
  else
    settled=0
  fi
  echo "bench-scrape: /metrics is $now bytes (settled $settled of 2)" >&2
  prev=$now
done

# (format, encoding) pairs: the name, the Accept header, gzip or not.
formats=(
  "text|text/plain;version=0.0.4"
  "openmetrics|application/openmetrics-text;version=1.0.0"
  "protobuf|application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
)
pairs=()
for f in "${formats[@]}"; do
  for enc in identity gzip; do
    pair="${f%%|*}/$enc"
    if [ -n "$only" ]; then
      keep=0
      for word in $only; do [[ $pair == *"$word"* ]] && keep=1; done
      [ $keep = 1 ] || continue
    fi
    pairs+=("$pair|${f#*|}")
  done
done

# Save each body and its headers; nginx serves the file with the same
# Content-Type and Content-Encoding (no ETag, no Last-Modified: headers of
# about the exporter's size).
mkdir -p "$tmp/bodies" "$tmp/nginx"
header_of() { # file, lower-case name: the value of that response header
  awk -v h="$2" 'tolower($0) ~ "^" h ":" {sub(/^[^:]*: */, ""); sub(/\r$/, ""); print}' "$1"
}
locations=""
for p in "${pairs[@]}"; do
  IFS='|' read -r pair accept <<<"$p"
  name=${pair//\//-}
  enc_header=()
  [[ $pair == */gzip ]] && enc_header=(-H "Accept-Encoding: gzip")
  curl -sf -D "$tmp/bodies/$name.headers" -o "$tmp/bodies/$name" \
    -H "Accept: $accept" "${enc_header[@]}" "$exp_url/metrics"
  chmod 644 "$tmp/bodies/$name"
  ctype=$(header_of "$tmp/bodies/$name.headers" content-type)
  cenc=$(header_of "$tmp/bodies/$name.headers" content-encoding)
  printf '%s\n' "$ctype" >"$tmp/bodies/$name.ctype"
  printf '%s\n' "$cenc" >"$tmp/bodies/$name.cenc"
  add_encoding=
  [ -z "$cenc" ] || add_encoding="add_header Content-Encoding $cenc;"
  locations+="    location = /$name {
      default_type \"$ctype\";
      alias $tmp/bodies/$name;
      $add_encoding
    }
"
done

# Temporary paths of the modules nginx was built with, in the temp dir (the
# built-in ones under /var/lib/nginx need root).
temp_paths="client_body_temp_path $tmp/nginx/body;"
for m in proxy fastcgi uwsgi scgi; do
  "$nginx_bin" -V 2>&1 | grep -q -- "--without-http_${m}_module" || temp_paths+=" ${m}_temp_path $tmp/nginx/$m;"
done
cat >"$tmp/nginx.conf" <<EOF
worker_processes $nginx_workers;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile $nginx_sendfile;
  tcp_nopush on;
  tcp_nodelay on;
  etag off;
  server_tokens off;
  # The exporter ends no keep-alive connection after a number of requests.
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  types { }
  $temp_paths
  server {
    listen 127.0.0.1:$nginx_port;
    if_modified_since off;
$locations  }
}
EOF
"$nginx_bin" -p "$tmp/nginx" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" -t >"$tmp/nginx-test.log" 2>&1 ||
  { cat "$tmp/nginx-test.log" >&2; exit 1; }
"$nginx_bin" -p "$tmp/nginx" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" >"$tmp/nginx.log" 2>&1 &
nginx_pid=$!
first=${pairs[0]%%|*}
wait_for "nginx answering" 30 curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/${first//\//-}"

# nginx must answer what the exporter answered, byte for byte and header
# for header.
for p in "${pairs[@]}"; do
  IFS='|' read -r pair accept <<<"$p"
  name=${pair//\//-}
  curl -sf -D "$tmp/check.headers" -o "$tmp/check.body" "http://127.0.0.1:$nginx_port/$name"
  cmp -s "$tmp/check.body" "$tmp/bodies/$name" || { echo "bench-scrape: nginx's $name is not the exporter's bytes" >&2; exit 1; }
  got_type=$(header_of "$tmp/check.headers" content-type)
  got_enc=$(header_of "$tmp/check.headers" content-encoding)
  if [ "$got_type" != "$(cat "$tmp/bodies/$name.ctype")" ] || [ "$got_enc" != "$(cat "$tmp/bodies/$name.cenc")" ]; then
    echo "bench-scrape: nginx's $name headers differ: '$got_type' '$got_enc'" >&2
    exit 1
  fi
done

# wrk reports its counts from Lua, so nothing depends on its text layout.
cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.bytes,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF
# In the background and waited for, so that a signal ends the run at once
# (the trap stops wrk too).
run_wrk() { # url, headers...
  local url=$1; shift
  local hs=()
  for h in "$@"; do hs+=(-H "$h"); done
  wrk -t"$threads" -c"$connections" -d"${duration}s" -s "$tmp/report.lua" "${hs[@]}" "$url" >"$tmp/wrk.out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid"
  wrk_pid=
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
results=$tmp/results.tsv
: >"$results"
echo "bench-scrape: ${#pairs[@]} pairs x $rounds rounds x 2 servers x ${duration}s" >&2
for p in "${pairs[@]}"; do
  IFS='|' read -r pair accept <<<"$p"
  name=${pair//\//-}
  hs=("Accept: $accept")
  [[ $pair == */gzip ]] && hs+=("Accept-Encoding: gzip")
  size=$(wc -c <"$tmp/bodies/$name")
  for r in $(seq "$rounds"); do
    for server in exporter nginx; do
      if [ $server = exporter ]; then url=$exp_url/metrics; else url=http://127.0.0.1:$nginx_port/$name; fi
      run_wrk "$url" "${hs[@]}"
      read -r n bytes us p50 p99 errors < <(awk '$1 == "RESULT" {print $2, $3, $4, $5, $6, $7}' "$tmp/wrk.out") ||
        { echo "bench-scrape: wrk gave no result:" >&2; cat "$tmp/wrk.out" >&2; exit 1; }
      # Every answer whole and 2xx: at least the body's bytes per request.
      if [ "$errors" -ne 0 ] || [ "$n" -eq 0 ] || [ $((bytes / n)) -lt "$size" ]; then
        echo "bench-scrape: $server $pair: $errors errors, $n requests, $((bytes / (n > 0 ? n : 1))) bytes each (body $size)" >&2
        cat "$tmp/wrk.out" >&2
        exit 1
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$server" "$r" "$size" "$n" "$us" "$p50" "$p99" >>"$results"
      echo "bench-scrape: $pair $server round $r: p50 ${p50} us, p99 ${p99} us, $((n * 1000000 / us)) req/s" >&2
    done
  done
done

echo
echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr); load average $load_start at the start of the rounds, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "Command: DURATION=$duration ROUNDS=$rounds CONNECTIONS=$connections THREADS=$threads NGINX_WORKERS=$nginx_workers NGINX_SENDFILE=$nginx_sendfile scripts/bench-scrape.sh ($(date -u +%F), exporter $version, breakdowns: ${breakdowns[*]}; wrk -t$threads -c$connections -d${duration}s, $rounds rounds each, alternating)"
echo
for p in "${pairs[@]}"; do
  IFS='|' read -r pair accept <<<"$p"
  name=${pair//\//-}
  printf '%s\t%s\t%s\n' "$pair" "$(cat "$tmp/bodies/$name.ctype")" "$(cat "$tmp/bodies/$name.cenc")"
done >"$tmp/types.tsv"
python3 - "$results" "$tmp/types.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
types = {l.split("\t")[0]: l.rstrip("\n").split("\t")[1:] for l in open(sys.argv[2])}
pairs = list(dict.fromkeys(r[0] for r in rows))
def med(pair, server, f):
    return st.median(f(r) for r in rows if r[0] == pair and r[1] == server)
p50 = lambda r: int(r[6]) / 1000
p99 = lambda r: int(r[7]) / 1000
rps = lambda r: int(r[4]) / (int(r[5]) / 1e6)
print("| format / encoding | Content-Type, Content-Encoding served | body bytes | p50 exporter / nginx | p99 exporter / nginx | req/s exporter / nginx | latency ratio (exporter/nginx, p50) | throughput ratio (nginx/exporter) | within 1.2x |")
print("|---|---|---|---|---|---|---|---|---|")
for pair in pairs:
    size = next(int(r[3]) for r in rows if r[0] == pair)
    e50, n50 = med(pair, "exporter", p50), med(pair, "nginx", p50)
    e99, n99 = med(pair, "exporter", p99), med(pair, "nginx", p99)
    er, nr = med(pair, "exporter", rps), med(pair, "nginx", rps)
    lat, thr = e50 / n50, nr / er
    ctype, cenc = types[pair]
    ok = "yes" if lat <= 1.2 and thr <= 1.2 else "no"
    print(f"| {pair} | {ctype}{', ' + cenc if cenc else ''} | {size:,} | {e50:.2f} / {n50:.2f} ms | {e99:.2f} / {n99:.2f} ms "
          f"| {er:,.0f} / {nr:,.0f} | {lat:.2f}x | {thr:.2f}x | {ok} |")
PY
