#!/usr/bin/env python3
"""What docker-compose and hadolint cannot know about deploy/docker/: that the
compose demo wires the exporter, Prometheus and Grafana together as the rest
of the repository does, and that the image is non-root and locked.

Run by scripts/validate-deploy.sh docker. Prints one line per problem.
"""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy/docker"
problems = []


def bad(msg):
    problems.append(msg)


def compose():
    c = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    s = c["services"]
    for name in ("exporter", "prometheus", "grafana"):
        if name not in s:
            bad(f"compose.yaml: no service {name}")
            return
    ex = s["exporter"]
    ctx = (DOCKER / ex["build"]["context"]).resolve()
    if ctx != ROOT or not (ctx / ex["build"]["dockerfile"]).is_file():
        bad("compose.yaml: exporter must build deploy/docker/Dockerfile from the repository root")
    if ex.get("command") != ["demo", "--web.listen-address", ":9817"]:
        bad("compose.yaml: exporter must run `demo --web.listen-address :9817`")
    # Every bind mount names something in the repository.
    mounts = {}
    for name, svc in s.items():
        for v in svc.get("volumes", []):
            src, target = v.split(":")[:2]
            if src.startswith("."):
                path = (DOCKER / src).resolve()
                if not path.exists():
                    bad(f"compose.yaml: {name} mounts {src}, which does not exist")
                mounts[(name, target)] = path
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    reference = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for rf in prom["rule_files"]:
        directory, file = rf.rsplit("/", 1)
        src = mounts.get(("prometheus", directory))
        if src is None or not (src / file).is_file():
            bad(f"prometheus.yml: rule file {rf} is not mounted from alerts/")
    rules = sorted(pathlib.PurePath(r).name for r in prom["rule_files"])
    want = sorted(pathlib.PurePath(r).name for r in reference["rule_files"])
    if rules != want:
        bad(f"prometheus.yml: rule files {rules}, deploy/prometheus/prometheus.yml has {want}")
    job, ref_job = prom["scrape_configs"][0], reference["scrape_configs"][0]
    for k in ("job_name", "scrape_interval", "scrape_timeout"):
        if job.get(k) != ref_job.get(k):
            bad(f"prometheus.yml: {k} {job.get(k)!r} differs from deploy/prometheus/prometheus.yml ({ref_job.get(k)!r})")
    if job["static_configs"][0]["targets"] != ["exporter:9817"]:
        bad("prometheus.yml: the target must be the exporter service, exporter:9817")
    if mounts.get(("grafana", "/var/lib/grafana/dashboards/clawmesh")) != ROOT / "dashboards":
        bad("compose.yaml: grafana must mount dashboards/ where the provider of deploy/grafana/ reads")
    if mounts.get(("grafana", "/etc/grafana/provisioning/dashboards")) != ROOT / "deploy/grafana/provisioning/dashboards":
        bad("compose.yaml: grafana must use the dashboard provider of deploy/grafana/")
    # The demo's data source is deploy/grafana's but for the url.
    ours = yaml.safe_load((DOCKER / "grafana-datasource.yml").read_text())
    theirs = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    if ours["datasources"][0].pop("url") != "http://prometheus:9090":
        bad("grafana-datasource.yml: url must be http://prometheus:9090")
    theirs["datasources"][0].pop("url")
    if ours != theirs:
        bad("grafana-datasource.yml: differs from deploy/grafana/provisioning/datasources/prometheus.yml beyond the url")


def dockerfile():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    final = stages[-1]
    if not re.search(r"(?m)^USER (65532|nonroot)", final):
        bad("Dockerfile: the final stage must run as the nonroot user (65532)")
    if not re.match(r"gcr\.io/distroless/cc-debian12:nonroot|debian:\S+-slim", final):
        bad("Dockerfile: the final stage must be distroless (cc-debian12:nonroot) or debian-slim")
    if "cargo build --release --locked" not in text:
        bad("Dockerfile: build with cargo build --release --locked")
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for m in re.finditer(r"(?m)^COPY (?!--from)(.+)$", text):
        for src in m.group(1).split()[:-1]:
            if src.rstrip("/") not in allowed:
                bad(f"Dockerfile: COPY {src}, which .dockerignore leaves out of the context")


compose()
dockerfile()
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print("docker: compose demo wired as deploy/prometheus and deploy/grafana, image non-root and locked")
