#!/usr/bin/env bash
# Validates deploy/ offline. tests/it/deploy.rs runs each part; scripts/test.sh
# installs the tools.
#
#   scripts/validate-deploy.sh [generated|kubernetes|helm|systemd|docker|all]
#
#   generated   deploy/'s copies of alerts/ and dashboards/ match their sources
#   kubernetes  kustomize renders of deploy/kubernetes/{base,sharded}
#   helm        helm lint --strict, and renders of the chart with default and ci/ values
#   systemd     systemd-analyze verify and an offline security score of the unit
#   docker      hadolint on the Dockerfile, docker-compose config on the compose
#               file, promtool on its Prometheus config
#
# Renders are validated by scripts/deploy/validate_manifests.py: Kubernetes
# schemas (kubernetes-validate, strict), Prometheus Operator schemas
# (@kubernetes-models/prometheus-operator) and the project's policy.
# CLAWMESH_EXPORTER_BIN: the built binary, used as the unit's ExecStart and
# for `check-config` on the rendered config files.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
validate() { python3 scripts/deploy/validate_manifests.py "$@"; }

check_generated() {
  python3 scripts/deploy/generate.py --check
}

check_kubernetes() {
  kubectl kustomize deploy/kubernetes/base >"$tmp/base.yaml"
  validate --expect "ConfigMap=2 Deployment=1 PrometheusRule=3 Service=1 ServiceMonitor=1" "$tmp/base.yaml"
  kubectl kustomize deploy/kubernetes/sharded >"$tmp/sharded.yaml"
  validate --expect "ConfigMap=3 PrometheusRule=3 Service=1 ServiceMonitor=1 StatefulSet=1" "$tmp/sharded.yaml"
}

check_helm() {
  local chart=deploy/helm/clawmesh-exporter
  helm lint --strict --quiet "$chart"
  helm template clawmesh-exporter "$chart" --namespace monitoring >"$tmp/helm-default.yaml"
  validate --expect "Deployment=1 Service=1" "$tmp/helm-default.yaml"
  for values in "$chart"/ci/*-values.yaml; do
    helm lint --strict --quiet "$chart" -f "$values"
  done
  helm template clawmesh-exporter "$chart" --namespace monitoring -f "$chart/ci/sharded-values.yaml" >"$tmp/helm-sharded.yaml"
  validate --expect "ConfigMap=3 PrometheusRule=3 Service=1 ServiceMonitor=1 StatefulSet=1" "$tmp/helm-sharded.yaml"
  helm template clawmesh-exporter "$chart" --namespace monitoring -f "$chart/ci/secured-values.yaml" >"$tmp/helm-secured.yaml"
  validate --expect "ConfigMap=2 Deployment=1 PrometheusRule=3 Secret=1 Service=1 ServiceMonitor=1" "$tmp/helm-secured.yaml"
  helm template clawmesh-exporter "$chart" --namespace monitoring -f "$chart/ci/persistence-values.yaml" >"$tmp/helm-persistence.yaml"
  validate --expect "Deployment=1 PersistentVolumeClaim=1 Service=1" "$tmp/helm-persistence.yaml"
  helm template clawmesh-exporter "$chart" --namespace monitoring --set persistence.enabled=true \
    --set persistence.existingClaim=clawmesh-state >"$tmp/helm-existing-claim.yaml"
  validate --expect "Deployment=1 Service=1" "$tmp/helm-existing-claim.yaml"
  # Values that make no sense are refused, with a reason.
  if out=$(helm template x "$chart" --set sharding.replicas=3 2>&1); then
    echo "helm: sharding one workspace was accepted" >&2; return 1
  fi
  grep -q "sharding.replicas > 1 needs workspaces" <<<"$out" || { echo "helm: $out" >&2; return 1; }
  if out=$(helm template x "$chart" -f "$chart/ci/sharded-values.yaml" --set persistence.existingClaim=one 2>&1); then
    echo "helm: one claim shared by shards was accepted" >&2; return 1
  fi
  grep -q "persistence.existingClaim cannot be shared by shards" <<<"$out" || { echo "helm: $out" >&2; return 1; }
  if out=$(helm template x "$chart" --set serviceMonitor.enable=true 2>&1); then
    echo "helm: a misspelt value was accepted" >&2; return 1
  fi
  echo "helm: lint, five renders valid, bad values refused"
}

check_systemd() {
  local unit=deploy/systemd/clawmesh-exporter.service exe="${CLAWMESH_EXPORTER_BIN:-}"
  if [ -z "$exe" ]; then
    exe="$tmp/clawmesh-exporter"
    printf '#!/bin/sh\n' >"$exe" && chmod +x "$exe"
  fi
  # verify needs ExecStart's binary to exist: a copy of the unit pointing at one.
  sed "s|^ExecStart=/usr/local/bin/clawmesh-exporter |ExecStart=$exe |" "$unit" >"$tmp/clawmesh-exporter.service"
  grep -q "^ExecStart=$exe " "$tmp/clawmesh-exporter.service"
  # verify exits 0 on unknown keys and bad values; anything it says is a problem.
  out=$(systemd-analyze verify "$tmp/clawmesh-exporter.service" 2>&1) || true
  if [ -n "$out" ]; then
    echo "systemd-analyze verify $unit:" >&2
    echo "$out" >&2
    return 1
  fi
  # Exposure at most 1.5 of 10 ("OK"; the unit scores 1.1 on systemd 252).
  if ! systemd-analyze security --offline=yes --threshold=15 "$tmp/clawmesh-exporter.service" >"$tmp/security.txt" 2>&1; then
    cat "$tmp/security.txt" >&2
    echo "systemd-analyze security: exposure above 1.5" >&2
    return 1
  fi
  echo "systemd: verify clean, $(grep -o 'exposure level[^:]*: [0-9.]* [A-Z]*' "$tmp/security.txt")"
}

check_docker() {
  hadolint deploy/docker/Dockerfile
  docker-compose -f deploy/docker/compose.yaml config -q
  # The demo's Prometheus config, with the rule files where this checkout has them.
  sed "s|/etc/prometheus/clawmesh/|$PWD/alerts/|" deploy/docker/prometheus.yml >"$tmp/prometheus.yml"
  promtool check config "$tmp/prometheus.yml" >/dev/null
  python3 scripts/deploy/check_docker.py
}

part="${1:-all}"
case "$part" in
  generated | kubernetes | helm | systemd | docker) "check_$part" ;;
  all) for p in generated kubernetes helm systemd docker; do "check_$p"; done ;;
  *) echo "usage: $0 [generated|kubernetes|helm|systemd|docker|all]" >&2; exit 2 ;;
esac
