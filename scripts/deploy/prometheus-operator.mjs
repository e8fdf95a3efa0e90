// Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule)
// against the schemas of the monitoring.coreos.com/v1 API that
// @kubernetes-models/prometheus-operator compiles from the operator's Go API
// types (types, required fields, enums and patterns such as durations).
// Unknown fields are not reported: those schemas do not close objects.
//
// stdin: a JSON array of objects. stdout: a JSON array, per object,
// {kind, name, errors: [...]}. Used by validate_manifests.py.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const MODELS = { ServiceMonitor, PrometheusRule, PodMonitor };

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = objects.map((obj) => {
  const name = obj?.metadata?.name ?? "(no name)";
  const Model = MODELS[obj.kind];
  if (obj.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    return { kind: obj.kind, name, errors: [`no schema for ${obj.apiVersion} ${obj.kind}`] };
  }
  try {
    new Model(obj).validate();
    return { kind: obj.kind, name, errors: [] };
  } catch (e) {
    const errors = (e.errors ?? []).map((x) => `${x.instancePath || "/"} ${x.message}`);
    return { kind: obj.kind, name, errors: errors.length ? errors : [String(e.message ?? e)] };
  }
});
process.stdout.write(JSON.stringify(results));
