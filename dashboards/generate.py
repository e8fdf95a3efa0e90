#!/usr/bin/env python3
"""Generates dashboards/clawmesh-*.json. Edit here, run `python3 dashboards/generate.py`,
commit both. The JSON files are what Grafana provisions and what tests/it/dashboards.rs checks.

Conventions: every panel uses the `${datasource}` variable, filters on
workspace=~"$workspace", has a unit and a description; the recording rules of
alerts/clawmesh-rules.yml are used wherever one exists, so a panel shows the
same number that an alert evaluates.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
WS = 'workspace=~"$workspace"'
RUNBOOKS = "https://github.com/clawmesh/clawmesh-exporter/blob/main/docs/runbooks.md"


def thresholds(*steps):
    """steps: (color, value) pairs; the first value is the base (None)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "refId": ref,
    }


class Layout:
    def __init__(self):
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1
        self.panels = []

    def add(self, panel, w, h, pid=None):
        """pid: a panel added later between existing ones keeps the id it was given
        (links with viewPanel= name ids); the others keep counting."""
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        if pid is None:
            pid = self.next_id
            self.next_id += 1
        panel["id"] = pid
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.y += 1
        self.x, self.row_h = 0, 0


def stat(title, desc, expr, unit, steps, mappings=None, no_value=None, decimals=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": thresholds(*steps),
                "mappings": mappings or []}
    if no_value is not None:
        defaults["noValue"] = no_value
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "textMode": "value",
            "orientation": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
    }


def timeseries(title, desc, targets, unit, stack=False, steps=None, min0=True, max_=None,
               draw_style="line", threshold_style="off"):
    custom = {
        "drawStyle": draw_style,
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": threshold_style},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
                "thresholds": thresholds(*(steps or [("green", None)])), "mappings": []}
    if min0:
        defaults["min"] = 0
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def variables():
    return {"list": [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
        },
        {
            "name": "workspace",
            "label": "Workspace",
            "type": "query",
            "datasource": DS,
            "definition": "label_values(clawmesh_up, workspace)",
            "query": "label_values(clawmesh_up, workspace)",
            "current": {},
            "hide": 0,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "options": [],
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "skipUrlSync": False,
        },
    ]}


def dashboard(uid, title, desc, panels):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["clawmesh"],
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [{"type": "dashboards", "tags": ["clawmesh"], "asDropdown": False, "includeVars": True,
                   "keepTime": True, "title": "ClawMesh", "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""},
                  {"type": "link", "title": "Runbooks", "url": RUNBOOKS, "targetBlank": True,
                   "asDropdown": False, "icon": "doc", "includeVars": False, "keepTime": False,
                   "tags": [], "tooltip": "What each ClawMesh alert means and what to do"}],
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "templating": variables(),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "version": 1,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
    }


UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                              "1": {"text": "UP", "color": "green", "index": 1}}}]


def fleet():
    L = Layout()
    # Top row: "is the fleet healthy?" without scrolling. Thresholds match the alerts.
    L.add(stat("Active agents", "Agents idle or busy, summed over the selected workspaces. Red at 0: no task can run "
               "(alert ClawMeshNoActiveAgents).",
               f"sum(clawmesh_agents_active{{{WS}}})", "none", [("red", None), ("green", 1)]), 3, 4)
    L.add(stat("Agents error/offline", "Share of all agents in status error or offline. Yellow from 10 %, red from 25 % "
               "(alert ClawMeshAgentsUnhealthy).",
               f'sum(clawmesh_agents{{{WS}, status=~"error|offline"}}) / sum(clawmesh_agents{{{WS}}})',
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], decimals=0), 3, 4)
    L.add(stat("Pending tasks", "Tasks waiting for an agent right now, summed over the selected workspaces.",
               f'sum(clawmesh_tasks{{{WS}, status="pending"}})', "none", [("blue", None)]), 3, 4)
    L.add(stat("Oldest pending task", "Age of the oldest pending task (worst workspace). Yellow from 10 min, red from "
               "30 min (alert ClawMeshPendingTasksStuck).",
               f"max(clawmesh_tasks_oldest_pending_age_seconds{{{WS}}})", "s",
               [("green", None), ("yellow", 600), ("red", 1800)]), 3, 4)
    L.add(stat("Throughput", "Tasks finished (completed, failed or cancelled) per minute over the last 5 minutes. "
               "Zero while tasks are pending is ClawMeshThroughputZero.",
               f"sum(workspace:clawmesh_tasks_finished:rate5m{{{WS}}}) * 60", "cpm",
               [("blue", None)]), 3, 4)
    L.add(stat("Error ratio 5m", "Failed / all finished tasks over the last 5 minutes. Yellow from 10 %, red from 25 % "
               "(alert ClawMeshTaskErrorRatioHigh, which also needs 20 tasks in 5 minutes).",
               f'sum(workspace_status:clawmesh_tasks_finished:rate5m{{{WS}, status="failed"}}) '
               f"/ sum(workspace:clawmesh_tasks_finished:rate5m{{{WS}}})",
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], no_value="no tasks", decimals=1), 3, 4)
    L.add(stat("Error ratio 1h", "Failed / all finished tasks over the last hour. Yellow from 10 % "
               "(alert ClawMeshTaskErrorRatioElevated).",
               f'sum(rate(clawmesh_tasks_finished_total{{{WS}, status="failed"}}[1h])) '
               f"/ sum(workspace:clawmesh_tasks_finished:rate1h{{{WS}}})",
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], no_value="no tasks", decimals=1), 3, 4)
    L.add(stat("Workspaces not syncing", "Selected workspaces whose last sync failed (clawmesh_up == 0): their numbers "
               "above are frozen. Details on the exporter dashboard.",
               f"count(clawmesh_up{{{WS}}} == 0) or vector(0)", "none", [("green", None), ("red", 1)]), 3, 4)

    L.row("Agents")
    L.add(timeseries("Agents by status", "Agents per status, summed over the selected workspaces. "
                     "Unknown statuses appear by name or as \"other\".",
                     [(f"sum by (status) (clawmesh_agents{{{WS}}})", "{{status}}")], "none", stack=True), 12, 8)
    L.add(timeseries("Active agents by workspace", "Agents idle or busy per workspace.",
                     [(f"clawmesh_agents_active{{{WS}}}", "{{workspace}}")], "none"), 12, 8)

    L.row("Tasks")
    L.add(timeseries("Tasks pending and running", "Current pending and running tasks per workspace.",
                     [(f"sum by (workspace, status) (clawmesh_tasks{{{WS}}})", "{{workspace}} {{status}}")], "none"), 8, 8)
    L.add(timeseries("Throughput by status", "Tasks reaching a terminal status per minute (5-minute rate).",
                     [(f"sum by (status) (workspace_status:clawmesh_tasks_finished:rate5m{{{WS}}}) * 60", "{{status}}")],
                     "cpm", stack=True), 8, 8)
    L.add(timeseries("Oldest pending task age", "How long the oldest pending task has waited, per workspace. "
                     "The dashed line is the ClawMeshPendingTasksStuck threshold (30 min).",
                     [(f"clawmesh_tasks_oldest_pending_age_seconds{{{WS}}}", "{{workspace}}")], "s",
                     steps=[("transparent", None), ("red", 1800)], threshold_style="dashed"), 8, 8)
    L.add(timeseries("Task error ratio", "Failed / all finished tasks per workspace over 5 minutes and 1 hour. "
                     "Gaps mean nothing finished. Dashed lines: warning 10 %, critical 25 %.",
                     [(f"workspace:clawmesh_task_error_ratio:ratio_rate5m{{{WS}}}", "{{workspace}} 5m"),
                      (f"workspace:clawmesh_task_error_ratio:ratio_rate1h{{{WS}}}", "{{workspace}} 1h")],
                     "percentunit", steps=[("transparent", None), ("yellow", 0.1), ("red", 0.25)],
                     threshold_style="dashed"), 12, 8)
    L.add(timeseries("Failures by error code", "Failed tasks per minute by error code (timeout, model_error, "
                     "skill_error, invalid_input, internal, ...), summed over the selected workspaces.",
                     [(f"sum by (code) (workspace_code:clawmesh_task_failures:rate5m{{{WS}}}) * 60", "{{code}}")],
                     "cpm", stack=True), 12, 8)

    L.row("Durations")
    L.add(timeseries("Queue duration p50 / p95 / p99", "Time from task creation to start, per workspace, "
                     "from the histogram clawmesh_task_queue_duration_seconds over 5 minutes.",
                     [(f"workspace_quantile:clawmesh_task_queue_duration_seconds:histogram_quantile_rate5m{{{WS}}}",
                       "{{workspace}} p{{quantile}}")], "s"), 12, 8)
    L.add(timeseries("Run duration p50 / p95 / p99", "Time from task start to finish, per workspace, "
                     "from the histogram clawmesh_task_run_duration_seconds over 5 minutes.",
                     [(f"workspace_quantile:clawmesh_task_run_duration_seconds:histogram_quantile_rate5m{{{WS}}}",
                       "{{workspace}} p{{quantile}}")], "s"), 12, 8)

    L.row("Tokens")
    L.add(timeseries("Tokens per minute", "Model tokens consumed by finished tasks per minute, input and output, "
                     "summed over the selected workspaces.",
                     [(f"sum by (kind) (workspace_kind:clawmesh_task_tokens:rate5m{{{WS}}}) * 60", "{{kind}}")],
                     "short", stack=True), 12, 8)
    L.add(timeseries("Tokens per minute by workspace", "Input plus output tokens per minute, per workspace.",
                     [(f"sum by (workspace) (workspace_kind:clawmesh_task_tokens:rate5m{{{WS}}}) * 60", "{{workspace}}")],
                     "short"), 12, 8)
    return dashboard("clawmesh-fleet", "ClawMesh / Fleet overview",
                     "Agents, tasks, throughput, errors, durations and tokens of ClawMesh workspaces "
                     "(clawmesh-exporter).", L.panels)


def exporter():
    L = Layout()
    L.add(stat("Exporter up", "Whether Prometheus scrapes the exporter (up{job=\"clawmesh\"}); DOWN also when no "
               "target exists (alert ClawMeshExporterDown).",
               'min(up{job="clawmesh"}) or vector(0)', "none", [("red", None), ("green", 1)], mappings=UP_MAPPINGS),
          4, 4)
    L.add(stat("Workspaces not syncing", "Selected workspaces whose last sync failed (alert ClawMeshApiUnreachable).",
               f"count(clawmesh_up{{{WS}}} == 0) or vector(0)", "none", [("green", None), ("red", 1)]), 4, 4)
    L.add(stat("Max data age", "Oldest data among the selected workspaces and resources: time since the start of the "
               "last successful sync. Yellow from 5 min, red from 10 min (alert ClawMeshDataStale).",
               f"max(time() - clawmesh_last_sync_timestamp_seconds{{{WS}}})", "s",
               [("green", None), ("yellow", 300), ("red", 600)]), 4, 4)
    L.add(stat("API errors", "Share of the exporter's API requests not answered 2xx over 5 minutes (includes 429, 403, "
               "timeouts and connection errors).",
               # `or vector(0)`: with no failed request there is no series to sum,
               # and a healthy exporter must show 0 %, not "No data".
               f'(sum(workspace_endpoint_code:clawmesh_api_requests:rate5m{{{WS}, code!~"2.."}}) or vector(0)) '
               f"/ sum(workspace_endpoint_code:clawmesh_api_requests:rate5m{{{WS}}})",
               "percentunit", [("green", None), ("yellow", 0.05), ("red", 0.2)], decimals=1), 4, 4)
    L.add(stat("Rate limit left (lowest)", "Lowest share of the rate-limit window left among the selected workspaces, "
               "as last reported by the API. Red under 10 % (alert ClawMeshApiBudgetNearlySpent).",
               f"min(workspace:clawmesh_api_rate_limit_remaining:ratio{{{WS}}})", "percentunit",
               [("red", None), ("yellow", 0.1), ("green", 0.25)], decimals=0), 4, 4)
    L.add(stat("Key expires in (soonest)", "Time until the first API key among the selected workspaces expires. "
               "Yellow under 7 days (ClawMeshApiKeyExpiringSoon), red under 1 day. Empty: no key expires.",
               f"min(clawmesh_api_token_expiry_timestamp_seconds{{{WS}}}) - time()", "s",
               [("red", None), ("yellow", 86400), ("green", 604800)], no_value="never"), 4, 4)

    L.row("Sync")
    L.add({
        "type": "state-timeline",
        "title": "Workspace sync state",
        "description": "clawmesh_up per workspace: UP when the last sync succeeded.",
        "datasource": DS,
        "targets": [target(f"clawmesh_up{{{WS}}}", "{{workspace}}")],
        "fieldConfig": {"defaults": {"unit": "none", "color": {"mode": "thresholds"},
                                     "thresholds": thresholds(("red", None), ("green", 1)),
                                     "mappings": UP_MAPPINGS, "custom": {"fillOpacity": 80, "lineWidth": 0}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }, 6, 8)
    L.add(timeseries("Data age by resource", "Time since the start of the last successful sync, per workspace and "
                     "resource (agents, tasks). The dashed line is the ClawMeshDataStale threshold (10 min).",
                     [(f"time() - clawmesh_last_sync_timestamp_seconds{{{WS}}}", "{{workspace}} {{resource}}")], "s",
                     steps=[("transparent", None), ("red", 600)], threshold_style="dashed"), 6, 8)
    L.add(timeseries("Sync failures", "Failed syncs per minute, per workspace and resource.",
                     [(f"sum by (workspace, resource) (rate(clawmesh_sync_failures_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{workspace}} {{resource}}")], "cpm", draw_style="bars"), 6, 8)
    L.add(timeseries("Loop panics (caught)", "Panics caught in the exporter's loops, by loop (task), in the window. "
                     "Each failed its round and the loop went on after a pause; any is a bug "
                     "(ClawMeshExporterLoopPanicked). Not filtered by workspace: the counter is the process's.",
                     [("sum by (instance, task) (increase(clawmesh_exporter_task_restarts_total[$__rate_interval]))",
                       "{{instance}} {{task}}")], "short", draw_style="bars"), 6, 8, pid=28)

    L.row("API")
    L.add(timeseries("API requests by endpoint and code", "Requests per minute the exporter sent to the ClawMesh API "
                     "(5-minute rate), by endpoint and answer (HTTP status, timeout, connection_error).",
                     [(f"sum by (endpoint, code) (workspace_endpoint_code:clawmesh_api_requests:rate5m{{{WS}}}) * 60",
                       "{{endpoint}} {{code}}")], "cpm", stack=True), 12, 8)
    L.add(timeseries("API latency p50 / p95 / p99", "Duration of API requests per workspace and endpoint, "
                     "from clawmesh_api_request_duration_seconds over 5 minutes.",
                     [(f"workspace_endpoint_quantile:clawmesh_api_request_duration_seconds:histogram_quantile_rate5m{{{WS}}}",
                       "{{workspace}} {{endpoint}} p{{quantile}}")], "s"), 12, 8)
    L.add(timeseries("API retries", "Retried requests per minute (429, 5xx, timeouts), per workspace and endpoint.",
                     [(f"sum by (workspace, endpoint) (rate(clawmesh_api_retries_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{workspace}} {{endpoint}}")], "cpm"), 12, 8)
    L.add(timeseries("403 and 429 answers", "Requests per minute answered 403 (key lacks a scope: "
                     "ClawMeshApiKeyMissingScope) or 429 (rate limited: ClawMeshApiRateLimited).",
                     [(f'sum by (workspace, endpoint, code) (workspace_endpoint_code:clawmesh_api_requests:rate5m{{{WS}, code=~"403|429"}}) * 60',
                       "{{workspace}} {{endpoint}} {{code}}")], "cpm"), 12, 8)
    L.add(timeseries("API clock skew", "The ClawMesh API's clock minus the exporter's, per workspace, estimated from "
                     "the API's Date headers: positive when the API is ahead. Red areas: beyond ±30 s, where "
                     "ClawMeshApiClockSkew fires after 10 min and data ages are suspect.",
                     [(f"clawmesh_api_clock_skew_seconds{{{WS}}}", "{{workspace}}")], "s", min0=False,
                     steps=[("red", None), ("transparent", -30), ("red", 30)], threshold_style="dashed+area"), 12, 8)
    L.add(timeseries("Rejected API objects", "Objects from the API the exporter refused to apply, per minute, by "
                     "workspace, resource (agents, tasks) and reason (future_timestamp: a timestamp far ahead of "
                     "the API's clock; invalid_number: a negative or non-finite number). Refusals that go on for "
                     "20 min are ClawMeshApiRejectingObjects; the exporter's log names each object.",
                     [(f"sum by (workspace, resource, reason) (rate(clawmesh_api_rejected_objects_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{workspace}} {{resource}} {{reason}}")], "cpm", draw_style="bars"), 12, 8)

    L.row("Rate limit and key")
    L.add(timeseries("Rate limit remaining", "Requests left in the current rate-limit window as a share of the "
                     "workspace's whole limit, which is shared with the customer's other integrations. "
                     "Dashed line: 10 % (ClawMeshApiBudgetNearlySpent).",
                     [(f"workspace:clawmesh_api_rate_limit_remaining:ratio{{{WS}}}", "{{workspace}}")],
                     "percentunit", max_=1, steps=[("transparent", None), ("red", 0.1)],
                     threshold_style="dashed"), 8, 8)
    L.add(timeseries("Exporter's share of the rate limit", "The exporter's own request rate and its allowed budget "
                     "(default 10 %), both as a share of the workspace's limit per minute.",
                     [(f"sum by (workspace) (workspace_endpoint_code:clawmesh_api_requests:rate5m{{{WS}}}) * 60 "
                       f"/ on (workspace) clawmesh_api_rate_limit_limit{{{WS}}}", "{{workspace}} used"),
                      (f"clawmesh_api_budget_requests_per_minute{{{WS}}} / on (workspace) clawmesh_api_rate_limit_limit{{{WS}}}",
                       "{{workspace}} budget")], "percentunit"), 8, 8)
    L.add(timeseries("Time waiting for budget", "Share of time the exporter waited to stay inside its request budget. "
                     "Near 100 %: the budget is too small for the fleet and data gets older.",
                     [(f"rate(clawmesh_api_budget_wait_seconds_total{{{WS}}}[$__rate_interval])", "{{workspace}}")],
                     "percentunit"), 8, 8)
    L.add({
        "type": "bargauge",
        "title": "API key expiry countdown",
        "description": "Time until each workspace's API key expires. Yellow under 7 days, red under 1 day. "
                       "Keys that never expire are not shown.",
        "datasource": DS,
        "targets": [target(f"clawmesh_api_token_expiry_timestamp_seconds{{{WS}}} - time()", "{{workspace}}",
                           instant=True)],
        "fieldConfig": {"defaults": {"unit": "s", "min": 0, "max": 2592000, "color": {"mode": "thresholds"},
                                     "thresholds": thresholds(("red", None), ("yellow", 86400), ("green", 604800)),
                                     "mappings": []},
                        "overrides": []},
        "options": {"displayMode": "basic", "orientation": "horizontal", "showUnfilled": True,
                    "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                    "minVizWidth": 8, "maxVizHeight": 300,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }, 12, 8)
    L.add({
        "type": "table",
        "title": "Exporter build",
        "description": "Version and revision of the running clawmesh-exporter (clawmesh_exporter_build_info).",
        "datasource": DS,
        "targets": [target("clawmesh_exporter_build_info", instant=True, fmt="table")],
        "fieldConfig": {"defaults": {"unit": "none", "custom": {"align": "auto"}, "mappings": [],
                                     "color": {"mode": "thresholds"}, "thresholds": thresholds(("green", None))},
                        "overrides": []},
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True}, "indexByName": {},
            "renameByName": {}}}],
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"],
                                                                       "countRows": False, "fields": ""}},
    }, 12, 8)
    L.row("OTLP export")
    L.add(timeseries("OTLP exports by result", "Exports per minute to the OpenTelemetry collector or Datadog that "
                     "carried each workspace's numbers, by result (success, failure after retries). Empty when "
                     "OTLP is off (no --otlp.endpoint).",
                     [(f"sum by (workspace, result) (rate(clawmesh_otlp_exports_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{workspace}} {{result}}")], "cpm"), 8, 8)
    L.add(timeseries("OTLP data age", "Time since an OTLP export carrying the workspace's numbers was last "
                     "accepted by the collector.",
                     [(f"time() - clawmesh_otlp_last_success_timestamp_seconds{{{WS}}}", "{{workspace}}")], "s"),
          8, 8)
    L.add(timeseries("OTLP data points held", "Data points built but not yet delivered while the collector is "
                     "away: bounded by the series count, never growing with the outage.",
                     [(f"clawmesh_otlp_pending_data_points{{{WS}}}", "{{workspace}}")], "none"), 8, 8)
    return dashboard("clawmesh-exporter", "ClawMesh / Exporter health",
                     "Health of clawmesh-exporter itself: scrape, sync, ClawMesh API requests, clock skew and "
                     "refused objects, rate limit, API key and OTLP export.", L.panels)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, d in (("clawmesh-fleet.json", fleet()), ("clawmesh-exporter.json", exporter())):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
