#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (kustomize or helm output) offline.

    python3 scripts/deploy/validate_manifests.py --expect "Deployment=1 Service=1 ..." FILE

1. Schemas. Core kinds against the Kubernetes OpenAPI schemas bundled with
   kubernetes-validate (PyPI), strict (unknown fields are errors), for the
   oldest and the newest Kubernetes the chart supports. Prometheus Operator
   kinds against @kubernetes-models/prometheus-operator (npm), through
   prometheus-operator.mjs.
2. The project's policy, which no schema knows: hardened pods, probes,
   resources, one replica per workspace unless sharded, shards that add up,
   keys never in flags, checkpoints (--storage.path) on a writable
   persistent volume of their own per shard, a ServiceMonitor that finds the
   Service and sets job="clawmesh", rules and dashboards equal to alerts/
   and dashboards/.
3. Against the exporter itself, when CLAWMESH_EXPORTER_BIN names a binary
   with the many-workspace CLI: every flag given is one its --help lists, and
   `check-config` accepts the config file of the render (with stand-in keys).

Prints one line per problem and exits 1 if there is any.
"""
import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate has.
K8S_VERSIONS = ("1.25.0", "1.37.0")
UID = 65532
PORT_NAME = "http-metrics"
JOB = "clawmesh"
# Every flag the deploy files may give the exporter (docs/configuration.md).
KNOWN_FLAGS = {
    "--api-url", "--api-key-file", "--config.file", "--shard", "--total-shards",
    "--web.listen-address", "--web.telemetry-path", "--web.config.file",
    "--web.enable-lifecycle", "--poll-interval", "--agents.interval",
    "--tasks.reconcile-interval", "--tasks.overlap", "--tasks.dedup-horizon",
    "--api.budget-share", "--api.timeout", "--api.max-attempts", "--log.level",
    "--log.format", "--storage.path", "--storage.interval", "--storage.max-size",
}
CONFIG_TOP = {"defaults", "workspaces", "storage"}
CONFIG_SETTINGS = {
    "api_url", "budget_share", "poll_interval", "agents_interval", "reconcile_interval",
    "overlap", "dedup_horizon", "timeout", "max_attempts",
}
CONFIG_WORKSPACE_ONLY = {"name", "id", "api_key_file", "api_key_env", "labels"}


class Report:
    def __init__(self, render):
        self.render = render
        self.problems = []

    def __call__(self, obj, msg):
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}" if obj else "render"
        self.problems.append(f"{self.render}: {where}: {msg}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_schemas(objs, bad):
    operator = []
    for o in objs:
        if o.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            operator.append(o)
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(o, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                bad(o, f"Kubernetes {v} schema: /{path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                bad(o, f"no Kubernetes {v} schema for {o.get('apiVersion')} {o.get('kind')}")
    if operator:
        out = subprocess.run(
            ["node", str(ROOT / "scripts/deploy/prometheus-operator.mjs")],
            input=json.dumps(operator), capture_output=True, text=True, check=False,
            cwd=ROOT / "scripts/deploy",
        )
        if out.returncode != 0:
            bad(None, f"prometheus-operator.mjs failed: {out.stderr.strip()}")
            return
        for o, r in zip(operator, json.loads(out.stdout)):
            for e in r["errors"]:
                bad(o, f"Prometheus Operator schema: {e}")


def flags_of(args):
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


_help_flags = None


def exporter_flags():
    """The flags `clawmesh-exporter --help` lists, when CLAWMESH_EXPORTER_BIN is
    a binary with the many-workspace CLI (it has --config.file); else None."""
    global _help_flags
    exe = os.environ.get("CLAWMESH_EXPORTER_BIN")
    if _help_flags is None and exe:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False).stdout
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*", out))
        _help_flags = flags if "--config.file" in flags else set()
    return _help_flags or None


def check_workload(o, objs, bad):
    kind = o["kind"]
    spec = o["spec"]
    pod = spec["template"]["spec"]
    sc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != UID:
        bad(o, f"pod securityContext must have runAsNonRoot: true and runAsUser: {UID}")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        bad(o, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        bad(o, "automountServiceAccountToken must be false: the exporter never calls the Kubernetes API")
    if not pod.get("terminationGracePeriodSeconds"):
        bad(o, "terminationGracePeriodSeconds must be set")
    containers = pod["containers"]
    if len(containers) != 1:
        bad(o, "expected exactly one container")
    c = containers[0]
    csc = c.get("securityContext", {})
    if csc.get("allowPrivilegeEscalation") is not False:
        bad(o, "container securityContext.allowPrivilegeEscalation must be false")
    if csc.get("readOnlyRootFilesystem") is not True:
        bad(o, "container securityContext.readOnlyRootFilesystem must be true")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        bad(o, "container securityContext.capabilities.drop must contain ALL")
    for section in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in c.get("resources", {}).get(section, {}):
                bad(o, f"resources.{section}.{res} must be set")
    args = c.get("args", [])
    flags = flags_of(args)
    for f in flags:
        if f not in KNOWN_FLAGS or f not in (exporter_flags() or KNOWN_FLAGS):
            bad(o, f"unknown exporter flag {f}")
    if "--api-key" in flags or any(e.get("name") == "CLAWMESH_API_KEY" and "value" in e for e in c.get("env", [])):
        bad(o, "an API key in the pod spec: keys come from a Secret, mounted or referenced")
    ports = [p for p in c.get("ports", []) if p.get("name") == PORT_NAME]
    if not ports:
        bad(o, f"no container port named {PORT_NAME}")
    mtls = "--web.config.file" in flags
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p:
            bad(o, f"{probe} missing")
        elif "httpGet" in p:
            if p["httpGet"].get("path") != path or p["httpGet"].get("port") != PORT_NAME:
                bad(o, f"{probe} must GET {path} on {PORT_NAME}")
        elif not ("tcpSocket" in p and mtls):
            bad(o, f"{probe} must GET {path} (a TCP probe only behind mutual TLS)")
    env = {e["name"]: e for e in c.get("env", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claim_templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes and m["name"] not in claim_templates:
            bad(o, f"volumeMount {m['name']} has no volume")
    check_storage(o, c, args, volumes, claim_templates, bad)
    names = {(x["kind"], x["metadata"]["name"]) for x in objs}
    for v in volumes.values():
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
            bad(o, f"volume {v['name']} names ConfigMap {v['configMap']['name']}, which the render lacks")
    if kind == "Deployment":
        if spec.get("replicas", 1) != 1:
            bad(o, "a Deployment runs one replica: every replica polls and spends its own budget share")
        if spec.get("strategy", {}).get("type") != "Recreate":
            bad(o, "a Deployment uses strategy Recreate: a rolling update would run two pollers")
        if "CLAWMESH_SHARD" in env:
            bad(o, "a Deployment is not sharded")
    elif kind == "StatefulSet":
        replicas = spec.get("replicas", 1)
        shard = env.get("CLAWMESH_SHARD", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if shard != "metadata.name":
            bad(o, "CLAWMESH_SHARD must come from metadata.name (the pod ordinal)")
        total = env.get("CLAWMESH_TOTAL_SHARDS", {}).get("value")
        if total != str(replicas):
            bad(o, f"CLAWMESH_TOTAL_SHARDS {total!r} differs from replicas {replicas}: workspaces would go unpolled or twice")
        if "--config.file" not in flags:
            bad(o, "a sharded StatefulSet needs --config.file (shards split workspaces)")
        svc = next((x for x in objs if x["kind"] == "Service" and x["metadata"]["name"] == spec.get("serviceName")), None)
        if svc is None:
            bad(o, f"serviceName {spec.get('serviceName')} is not in the render")
        elif svc["spec"].get("clusterIP") != "None":
            bad(o, f"its governing Service {svc['metadata']['name']} must be headless")


def check_storage(o, c, args, volumes, claim_templates, bad):
    """--storage.path (checkpoints): a writable mount of a persistent volume,
    one per shard. The root file system is read-only, and an emptyDir dies
    with the pod, so either would make the checkpoints useless."""
    paths = [a.split("=", 1)[1] for a in args if a.startswith("--storage.path=")]
    paths += [e["value"] for e in c.get("env", []) if e.get("name") == "CLAWMESH_STORAGE_PATH" and "value" in e]
    for path in paths:
        mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath", "").rstrip("/") == path.rstrip("/")]
        if not mounts:
            bad(o, f"--storage.path {path} is not a volumeMount: the root file system is read-only")
            continue
        m = mounts[0]
        if m.get("readOnly"):
            bad(o, f"--storage.path {path}: its volumeMount {m['name']} is readOnly")
        v = volumes.get(m["name"])
        if m["name"] in claim_templates:
            continue
        if v is None or "persistentVolumeClaim" not in v:
            bad(o, f"--storage.path {path}: volume {m['name']} is not a PersistentVolumeClaim: the checkpoints would not outlive the pod")
        elif o["kind"] == "StatefulSet" and o["spec"].get("replicas", 1) > 1:
            bad(o, f"--storage.path {path}: the shards share claim {v['persistentVolumeClaim'].get('claimName')}; each needs its own (volumeClaimTemplates)")


def check_service_monitor(o, objs, bad):
    sel = o["spec"]["selector"].get("matchLabels", {})
    services = [
        s for s in objs
        if s["kind"] == "Service" and sel and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
    ]
    if len(services) != 1:
        bad(o, f"selects {len(services)} Services of the render, not exactly one")
    for ep in o["spec"]["endpoints"]:
        for s in services:
            if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                bad(o, f"endpoint port {ep.get('port')} is not a port of Service {s['metadata']['name']}")
        job = [r for r in ep.get("relabelings", []) if r.get("targetLabel") == "job"]
        if not job or job[0].get("replacement") != JOB:
            bad(o, f'endpoint must set job="{JOB}": the alerts select it')
    workloads = [x for x in objs if x["kind"] in ("Deployment", "StatefulSet")]
    for s in services:
        ssel = s["spec"]["selector"]
        if not any(all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in ssel.items()) for w in workloads):
            bad(s, "selects no pod of the render")


def check_rules(objs, bad):
    want = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "alerts").glob("*.yml"))}
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    if not rules:
        return
    got = [o["spec"] for o in rules]
    for name, spec in want.items():
        if spec not in got:
            bad(None, f"no PrometheusRule equals alerts/{name}")
    for o in rules:
        if o["spec"] not in want.values():
            bad(o, "its spec equals no file of alerts/")


def check_dashboards(objs, bad):
    want = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))}
    cms = [o for o in objs if o["kind"] == "ConfigMap" and any(k.endswith(".json") for k in o.get("data", {}))]
    if not cms:
        return
    seen = set()
    for o in cms:
        if o["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            bad(o, 'a dashboard ConfigMap needs the label grafana_dashboard: "1"')
        for key, text in o["data"].items():
            if key not in want:
                bad(o, f"{key} is not a file of dashboards/")
            elif json.loads(text) != want[key]:
                bad(o, f"{key} differs from dashboards/{key}")
            seen.add(key)
    for key in sorted(set(want) - seen):
        bad(None, f"no ConfigMap holds dashboards/{key}")


def check_config_file(objs, bad):
    for o in objs:
        if o["kind"] != "ConfigMap" or "config.yaml" not in o.get("data", {}):
            continue
        text = o["data"]["config.yaml"]
        cfg = yaml.safe_load(text)
        for k in set(cfg) - CONFIG_TOP:
            bad(o, f"config.yaml: unknown key {k}")
        for k in set(cfg.get("defaults") or {}) - CONFIG_SETTINGS:
            bad(o, f"config.yaml: defaults.{k}: unknown key")
        for i, w in enumerate(cfg.get("workspaces") or []):
            for k in set(w) - CONFIG_SETTINGS - CONFIG_WORKSPACE_ONLY:
                bad(o, f"config.yaml: workspaces[{i}].{k}: unknown key")
        run_check_config(o, text, cfg, bad)


def run_check_config(o, text, cfg, bad):
    """`clawmesh-exporter check-config`, with stand-in key files and variables."""
    exe = os.environ.get("CLAWMESH_EXPORTER_BIN")
    if not exe:
        return
    probe = subprocess.run([exe, "check-config", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        print(f"NOTE: {exe} has no check-config subcommand; config.yaml checked for known keys only")
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": os.environ.get("PATH", "")}
        for w in cfg.get("workspaces") or []:
            if "api_key_file" in w:
                stand_in = pathlib.Path(tmp + w["api_key_file"])
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("stand-in-key\n")
                text = text.replace(w["api_key_file"], str(stand_in))
            if "api_key_env" in w:
                env[w["api_key_env"]] = "stand-in-key"
        path = pathlib.Path(tmp) / "config.yaml"
        path.write_text(text)
        out = subprocess.run([exe, "check-config", str(path)], capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            bad(o, f"check-config: {(out.stdout + out.stderr).strip()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", required=True, help='kinds and counts, e.g. "Deployment=1 Service=1"')
    ap.add_argument("file")
    a = ap.parse_args()
    bad = Report(a.file)
    objs = load(a.file)
    want = collections.Counter({k: int(n) for k, n in (x.split("=") for x in a.expect.split())})
    got = collections.Counter(o.get("kind") for o in objs)
    if got != want:
        bad(None, f"kinds {dict(sorted(got.items()))}, expected {dict(sorted(want.items()))}")
    check_schemas(objs, bad)
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            check_workload(o, objs, bad)
        elif o["kind"] == "ServiceMonitor":
            check_service_monitor(o, objs, bad)
    check_rules(objs, bad)
    check_dashboards(objs, bad)
    check_config_file(objs, bad)
    for p in bad.problems:
        print(p)
    if bad.problems:
        return 1
    print(f"{a.file}: {sum(got.values())} objects valid ({', '.join(f'{k} {n}' for k, n in sorted(got.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
