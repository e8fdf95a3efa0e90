//! deploy/ validated offline: the generated copies of alerts/ and dashboards/,
//! the kustomize and Helm renders against the Kubernetes and Prometheus
//! Operator schemas and the project's policy, the systemd unit, the
//! Dockerfile and the compose demo. The work is in scripts/validate-deploy.sh
//! (run it by hand for the same result); each test runs one part of it.
//!
//! A missing validator skips the part with a notice, and fails it under
//! `CI=true`; scripts/test.sh installs them all.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::repo_root;

/// What a part of the validation needs besides the repository.
enum Need {
    /// A program on PATH.
    Tool(&'static str),
    /// The Python modules the validators import (kubernetes-validate brings PyYAML).
    PythonModules,
    /// scripts/deploy/node_modules (`npm ci --prefix scripts/deploy`).
    NodeModules,
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// True when everything is there; a skip with a notice, or under `CI=true` a
/// failure, when something is not.
fn have(part: &str, needs: &[Need]) -> bool {
    for need in needs {
        let (present, what) = match need {
            Need::Tool(t) => (on_path(t), format!("{t} (on PATH)")),
            Need::PythonModules => (
                on_path("python3")
                    && Command::new("python3")
                        .args(["-c", "import kubernetes_validate, yaml"])
                        .output()
                        .is_ok_and(|o| o.status.success()),
                "the Python module kubernetes_validate (pip install kubernetes-validate)".into(),
            ),
            Need::NodeModules => (
                repo_root()
                    .join("scripts/deploy/node_modules/@kubernetes-models/prometheus-operator")
                    .is_dir(),
                "scripts/deploy/node_modules (npm ci --prefix scripts/deploy)".into(),
            ),
        };
        if !present {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "deploy {part}: {what} is required under CI=true; scripts/test.sh installs it"
                );
            }
            eprintln!("SKIPPED deploy {part}: {what} is missing; scripts/test.sh installs it, CI=true makes this a failure");
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(repo_root())
        .env(
            "CLAWMESH_EXPORTER_BIN",
            env!("CARGO_BIN_EXE_clawmesh-exporter"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The parts run one at a time: each starts Python, Node or helm processes,
/// and on a 2-core machine running them side by side would starve the
/// timing-sensitive simulator tests that share the test binary.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs one part of scripts/validate-deploy.sh; panics with its output when it fails.
fn validate(part: &str, needs: &[Need]) {
    if !have(part, needs) {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = run(Command::new("bash").args(["scripts/validate-deploy.sh", part]));
    let said = text(&out);
    assert!(out.status.success(), "deploy {part} is not valid:\n{said}");
    eprint!("{said}");
}

const MANIFESTS: [Need; 3] = [Need::Tool("node"), Need::PythonModules, Need::NodeModules];

#[test]
fn generated_copies_match_alerts_and_dashboards() {
    validate("generated", &[Need::Tool("python3")]);
}

#[test]
fn kustomize_renders_are_valid() {
    let [a, b, c] = MANIFESTS;
    validate("kubernetes", &[Need::Tool("kubectl"), a, b, c]);
}

#[test]
fn helm_chart_renders_are_valid() {
    let [a, b, c] = MANIFESTS;
    validate("helm", &[Need::Tool("helm"), a, b, c]);
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    validate("systemd", &[Need::Tool("systemd-analyze")]);
}

#[test]
fn dockerfile_and_compose_demo_are_valid() {
    validate(
        "docker",
        &[
            Need::Tool("hadolint"),
            Need::Tool("docker-compose"),
            Need::Tool("promtool"),
            Need::PythonModules,
        ],
    );
}

/// The validator is not vacuous: a render broken in each way the policy and
/// the schemas know is refused, and every problem is named.
#[test]
fn manifest_validator_names_each_problem() {
    if !have("validator", &MANIFESTS) {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broken = r#"
apiVersion: v1
kind: Service
metadata: {name: clawmesh-exporter, labels: {app.kubernetes.io/name: clawmesh-exporter}}
spec:
  selector: {app.kubernetes.io/name: clawmesh-exporter}
  ports: [{name: http-metrics, port: 9817, targetPort: http-metrics}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: clawmesh-exporter}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: clawmesh-exporter}}
  template:
    metadata: {labels: {app.kubernetes.io/name: clawmesh-exporter}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      securityContext: {runAsNonRoot: true, runAsUser: 0, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: clawmesh-exporter
          image: clawmesh-exporter
          args: [--api-key=abc, --web.listen-adress=:9817]
          ports: [{name: http-metrics, containerPort: 9817}]
          livenesProbe: {httpGet: {path: /healthz, port: http-metrics}}
          readinessProbe: {httpGet: {path: /metrics, port: http-metrics}}
          resources: {requests: {cpu: 10m, memory: 32Mi}}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: false, capabilities: {drop: [ALL]}}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: clawmesh-exporter}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: clawmesh-exporter}}
  endpoints: [{port: metrics, interval: 30 seconds}]
"#;
    let dir = std::env::temp_dir().join(format!("clawmesh-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let out = run(Command::new("python3").args([
        Path::new("scripts/deploy/validate_manifests.py").as_os_str(),
        "--expect".as_ref(),
        "Deployment=1 Service=1 ServiceMonitor=1".as_ref(),
        file.as_os_str(),
    ]));
    std::fs::remove_dir_all(&dir).ok();
    let said = text(&out);
    assert!(!out.status.success(), "a broken render passed:\n{said}");
    for problem in [
        "'livenesProbe' was unexpected",
        "runAsUser: 65532",
        "readOnlyRootFilesystem must be true",
        "resources.limits.cpu must be set",
        "resources.limits.memory must be set",
        "unknown exporter flag --web.listen-adress",
        "an API key in the pod spec",
        "livenessProbe missing",
        "readinessProbe must GET /readyz",
        "a Deployment runs one replica",
        "strategy Recreate",
        "interval must match pattern",
        "endpoint port metrics is not a port of Service clawmesh-exporter",
        r#"must set job="clawmesh""#,
    ] {
        assert!(said.contains(problem), "not named: {problem}\n{said}");
    }
}
