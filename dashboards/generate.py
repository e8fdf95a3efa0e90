#!/usr/bin/env python3
"""Generates dashboards/clawmesh-*.json. Edit here, run `python3 dashboards/generate.py`,
commit both. The JSON files are what Grafana provisions and what tests/it/dashboards.rs checks.

Conventions: every panel uses the `${datasource}` variable, filters on
workspace=~"$workspace", has a unit and a description; the recording rules of
alerts/clawmesh-rules.yml are used wherever one exists, so a panel shows the
same number that an alert evaluates.

Breakdowns (issue 11): the fleet dashboard also has the variables team, env,
provider and model, and every panel on a family that carries the breakdown
dimensions filters on them (F below). The recording rules sum those
dimensions away, so such panels use the rule's own expression (same window)
with the filters added: with every variable at All they show exactly what
the rule, and the alert, evaluates. All is ".*", which also matches the empty
value, i.e. a dimension whose breakdown is off.

Panels built by slo_panel() read the SLO recording rules of
alerts/clawmesh-slo.yml (names starting `workspace_provider:clawmesh_slo_`); tests/it tells them
by that prefix.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
WS = 'workspace=~"$workspace"'
# The breakdown dimensions with a fleet variable each (label = variable name).
DIMS = ("team", "env", "provider", "model")
F = ", ".join([WS] + [f'{d}=~"${d}"' for d in DIMS])
NONE = "(none)"
# Titles of panels that read native histograms: empty unless Prometheus
# scrapes them (tests/it tells them by this mark).
NATIVE = "(native histogram)"


def by(dim, expr):
    """expr aggregated `by (dim)`, its empty value (breakdown off, agent unknown)
    named NONE so that the legend says so instead of showing nothing."""
    return f'label_replace({expr}, "{dim}", "{NONE}", "{dim}", "")'
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
        self.used = set()
        self.panels = []

    def add(self, panel, w, h, pid=None):
        """pid: a panel added later between existing ones keeps the id it was given
        (links with viewPanel= name ids); the others keep counting."""
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        if pid is None:
            # Past the ids given out by hand (pid=): two panels with one id
            # break Grafana's links and layout.
            while self.next_id in self.used:
                self.next_id += 1
            pid = self.next_id
            self.next_id += 1
        self.used.add(pid)
        panel["id"] = pid
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title, pid=None):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1, pid)
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


def dim_variable(dim, label):
    query = f"label_values(clawmesh_agents{{{WS}}}, {dim})"
    return {
        "name": dim,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        # All by default: an empty list (the breakdown is off) must not hide data.
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "skipUrlSync": False,
    }


def variables(dims=False):
    extra = [dim_variable(d, label) for d, label in
             (("team", "Team"), ("env", "Env"), ("provider", "Provider"), ("model", "Model"))] if dims else []
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
    ] + extra}


def dashboard(uid, title, desc, panels, dims=False):
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
        "templating": variables(dims),
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


def rate5m(metric, sel="", window="5m"):
    """rate() of a counter over the recording rules' window, with the fleet filters."""
    extra = f", {sel}" if sel else ""
    return f"rate({metric}{{{F}{extra}}}[{window}])"


def quantiles(metric, level="workspace"):
    """p50/p95/p99 targets of a histogram per `level`, as the durations rules compute them."""
    return [(f"histogram_quantile({q}, sum by ({level}, le) ({rate5m(metric + '_bucket')}))",
             f"{{{{{level}}}}} p{p}") for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))]


def slo_panel(panel):
    """A panel on the SLO recording rules of alerts/clawmesh-slo.yml (`workspace_provider:clawmesh_slo_*`)."""
    panel["description"] += (" From the SLO recording rules (alerts/clawmesh-slo.yml); empty where those rules "
                             "are not loaded.")
    return panel


# The dimensions of the "Where" row (env is a filter only).
WHERE_DIMS = ("team", "provider", "model")


def where_row(L):
    """Throughput, errors, tokens and run time, each by team, provider and model."""
    L.row("Where")
    finished, failed, settled = "clawmesh_tasks_finished_total", 'status="failed"', 'status=~"completed|failed"'
    for dim in WHERE_DIMS:
        L.add(timeseries(f"Throughput by {dim}", f"Tasks finished (completed, failed, cancelled) per minute by {dim} "
                         f"(5-minute rate). \"{NONE}\": tasks of no known agent, or the {dim} breakdown is off.",
                         [(by(dim, f"sum by ({dim}) ({rate5m(finished)}) * 60"),
                           f"{{{{{dim}}}}}")], "cpm", stack=True), 8, 8)
    for dim in WHERE_DIMS:
        L.add(timeseries(f"Error ratio by {dim}", f"Failed / (completed + failed) tasks by {dim} over 5 minutes; "
                         "cancelled tasks are left out, they say nothing about where failures come from. Gaps: "
                         f"nothing finished. Dashed lines: 10 % and 25 %. \"{NONE}\": no agent, or breakdown off.",
                         [(by(dim, f"sum by ({dim}) ({rate5m(finished, failed)}) / sum by ({dim}) ({rate5m(finished, settled)})"),
                           f"{{{{{dim}}}}}")], "percentunit",
                         steps=[("transparent", None), ("yellow", 0.1), ("red", 0.25)], threshold_style="dashed"),
              8, 8)
    for dim in WHERE_DIMS:
        L.add(timeseries(f"Tokens per minute by {dim}", f"Input plus output model tokens of finished tasks per minute "
                         f"by {dim} (5-minute rate). \"{NONE}\": no agent, or breakdown off.",
                         [(by(dim, f"sum by ({dim}) ({rate5m('clawmesh_task_tokens_total')}) * 60"),
                           f"{{{{{dim}}}}}")], "short", stack=True), 8, 8)
    for dim in WHERE_DIMS:
        L.add(timeseries(f"Run time p95 by {dim}", f"95th percentile of the time from task start to finish by {dim}, "
                         "from clawmesh_task_run_duration_seconds over 5 minutes. "
                         f"\"{NONE}\": no agent, or breakdown off.",
                         [(by(dim, f"histogram_quantile(0.95, sum by ({dim}, le) "
                                   f"({rate5m('clawmesh_task_run_duration_seconds_bucket')}))"),
                           f"{{{{{dim}}}}}")], "s"), 8, 8)


def spend_row(L):
    """What the tasks cost (docs/spend.md): spend by team, provider and model,
    cost per successful task, waste, the budgets, the tokens without a price.
    Absent (empty panels) without a price table. Spend is in the price
    table's currency, per hour over 1 hour as the recording rules of
    alerts/clawmesh-rules.yml compute it (workspace*:clawmesh_task_spend:rate1h):
    spend arrives in steps, one per sync that saw tasks finish.

    Panel ids from 50 on (pid=): the row was added between existing rows,
    whose ids links may name."""
    pid = iter(range(50, 100))
    spend, finished = "clawmesh_task_spend_total", "clawmesh_tasks_finished_total"
    wasted, completed = 'status=~"failed|cancelled"', 'status="completed"'
    cur = "in the price table's currency"
    L.row("Spend", pid=next(pid))
    L.add(stat("Spend per hour", f"What the tasks that finished over the last hour cost, {cur}, summed over the "
               "selected workspaces (completed, failed and cancelled tasks).",
               f"sum({rate5m(spend, window='1h')}) * 3600", "short", [("blue", None)], decimals=2), 4, 4, pid=next(pid))
    L.add(stat("Cost per successful task", "All spend over the last hour (failures and cancellations included) over "
               "the tasks that completed in it: what a success really costs. Empty while none completed.",
               f"sum({rate5m(spend, window='1h')}) / sum({rate5m(finished, completed, '1h')})",
               "short", [("blue", None)], decimals=4), 4, 4, pid=next(pid))
    L.add(stat("Waste share 1h", "Share of the last hour's spend on tasks that failed or were cancelled: money "
               "spent on work thrown away. Yellow from 10 %, red from 25 %.",
               f"(sum({rate5m(spend, wasted, '1h')}) or 0 * sum({rate5m(spend, window='1h')})) "
               f"/ sum({rate5m(spend, window='1h')})",
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], decimals=1), 4, 4, pid=next(pid))
    L.add(stat("Budgets spent", "Budgets (month or day) of the selected workspaces whose spend this period has "
               "reached their amount (ClawMeshBudgetExceeded).",
               f"count(workspace_budget_period:clawmesh_budget_spend:ratio{{{WS}}} >= 1) or vector(0)", "none",
               [("green", None), ("red", 1)]), 4, 4, pid=next(pid))
    L.add(stat("Budgets projected over", "Budgets (month or day) whose spend so far plus the last 6 hours' rate "
               "until the period's end is above their amount (ClawMeshBudgetProjectedOverrun after 1 h).",
               f"count(workspace_budget_period:clawmesh_budget_spend:projected_rate6h{{{WS}}} "
               f"> workspace_budget_period:clawmesh_budget_amount:max{{{WS}}}) or vector(0)", "none",
               [("green", None), ("yellow", 1)]), 4, 4, pid=next(pid))
    L.add(stat("Unpriced tokens 1h", "Tokens of the last hour whose provider and model the price table has no "
               "price for: left out of every spend number, never priced at 0 (ClawMeshUnpricedTokens). "
               "\"no price table\": the exporter runs without one.",
               f"sum(increase(clawmesh_task_unpriced_tokens_total{{{WS}}}[1h])) "
               "or 0 * count(clawmesh_exporter_prices_info)", "short",
               [("green", None), ("yellow", 1)], no_value="no price table"), 4, 4, pid=next(pid))
    for dim in WHERE_DIMS:
        L.add(timeseries(f"Spend per hour by {dim}", f"What finished tasks cost per hour by {dim}, {cur} (1-hour "
                         f"rate). \"{NONE}\": tasks of no known agent, or the {dim} breakdown is off.",
                         [(by(dim, f"sum by ({dim}) ({rate5m(spend, window='1h')}) * 3600"),
                           f"{{{{{dim}}}}}")], "short", stack=True), 8, 8, pid=next(pid))
    L.add(timeseries("Cost per successful task", "All spend over the last hour (failures and cancellations "
                     f"included) over the tasks that completed in it, per workspace, {cur}. Gaps: none completed.",
                     [(f"sum by (workspace) ({rate5m(spend, window='1h')}) "
                       f"/ (sum by (workspace) ({rate5m(finished, completed, '1h')}) > 0)",
                       "{{workspace}}")], "short"), 8, 8, pid=next(pid))
    L.add(timeseries("Spend per hour by status", f"Spend per hour by the tasks' terminal status, {cur}: "
                     "failed and cancelled are waste.",
                     [(f"sum by (status) ({rate5m(spend, window='1h')}) * 3600", "{{status}}")], "short",
                     stack=True), 8, 8, pid=next(pid))
    L.add(timeseries("Waste share", "Share of the spend on failed and cancelled tasks over the last hour, per "
                     "workspace. Dashed lines: 10 % and 25 %.",
                     [(f"(sum by (workspace) ({rate5m(spend, wasted, '1h')}) "
                       f"or 0 * sum by (workspace) ({rate5m(spend, window='1h')})) "
                       f"/ sum by (workspace) ({rate5m(spend, window='1h')})", "{{workspace}}")], "percentunit",
                     steps=[("transparent", None), ("yellow", 0.1), ("red", 0.25)], threshold_style="dashed"),
          8, 8, pid=next(pid))
    month = f'{WS}, period="month"'
    L.add({
        "type": "bargauge",
        "title": "Budget used and projected (month)",
        "description": "Per monthly budget: the share of its amount spent this UTC month, and the share projected "
                       "at the month's end (spent so far plus the last 6 hours' rate until then). Over 100 % "
                       "projected for 1 h is ClawMeshBudgetProjectedOverrun; spent, ClawMeshBudgetExceeded.",
        "datasource": DS,
        "targets": [target(f"workspace_budget_period:clawmesh_budget_spend:ratio{{{month}}}",
                           "{{workspace}} {{budget}} used", "A", instant=True),
                    target(f"workspace_budget_period:clawmesh_budget_spend:projected_rate6h{{{month}}} "
                           f"/ workspace_budget_period:clawmesh_budget_amount:max{{{month}}}",
                           "{{workspace}} {{budget}} projected", "B", instant=True)],
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1.5, "color": {"mode": "thresholds"},
                                     "thresholds": thresholds(("green", None), ("yellow", 0.8), ("red", 1)),
                                     "mappings": []},
                        "overrides": []},
        "options": {"displayMode": "basic", "orientation": "horizontal", "showUnfilled": True,
                    "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                    "minVizWidth": 8, "maxVizHeight": 300,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }, 8, 8, pid=next(pid))
    L.add(timeseries("Budget spend, projection and amount (month)", "Per monthly budget, in the price table's "
                     "currency: spent this UTC month, projected at the month's end, and the amount.",
                     [(f"workspace_budget_period:clawmesh_budget_spend:max{{{month}}}", "{{workspace}} {{budget}} spent"),
                      (f"workspace_budget_period:clawmesh_budget_spend:projected_rate6h{{{month}}}",
                       "{{workspace}} {{budget}} projected"),
                      (f"workspace_budget_period:clawmesh_budget_amount:max{{{month}}}",
                       "{{workspace}} {{budget}} amount")], "short"), 8, 8, pid=next(pid))
    L.add(timeseries("Budget burn rate 1h", "How fast each budget is spent over the last hour: rate * period "
                     "length / amount (a month counted as 30 days). 1 spends the amount in one period; 10 (dashed) "
                     "spends a month's in 3 days, a day's in 2.4 h: ClawMeshBudgetFastBurn when the last 5 minutes "
                     "agree.",
                     [(f"workspace_budget_period:clawmesh_budget_spend:burn_rate1h{{{WS}}}",
                       "{{workspace}} {{budget}} {{period}}")], "none",
                     steps=[("transparent", None), ("red", 10)], threshold_style="dashed"), 8, 8, pid=next(pid))
    L.add(timeseries("Unpriced tokens by provider and model", "Tokens per hour of tasks whose provider and model "
                     "the price table has no price for (input and output): their spend is unknown and left out of "
                     "every spend number. Add the model to the table (docs/spend.md). Empty names: tasks of no "
                     "known agent. Empty panel: everything is priced.",
                     [(f'sum by (provider, model) (rate(clawmesh_task_unpriced_tokens_total{{{WS}, '
                       f'provider=~"$provider", model=~"$model"}}[1h])) * 3600', "{{provider}} {{model}}")],
                     "short", stack=True), 24, 8, pid=next(pid))


def fleet():
    L = Layout()
    failed = 'status="failed"'
    # Top row: "is the fleet healthy?" without scrolling. Thresholds match the alerts.
    L.add(stat("Active agents", "Agents idle or busy, summed over the selected workspaces. Red at 0: no task can run "
               "(alert ClawMeshNoActiveAgents).",
               f"sum(clawmesh_agents_active{{{F}}})", "none", [("red", None), ("green", 1)]), 3, 4)
    L.add(stat("Agents error/offline", "Share of all agents in status error or offline. Yellow from 10 %, red from 25 % "
               "(alert ClawMeshAgentsUnhealthy).",
               f'sum(clawmesh_agents{{{F}, status=~"error|offline"}}) / sum(clawmesh_agents{{{F}}})',
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], decimals=0), 3, 4)
    L.add(stat("Pending tasks", "Tasks waiting for an agent right now, summed over the selected workspaces.",
               f'sum(clawmesh_tasks{{{F}, status="pending"}})', "none", [("blue", None)]), 3, 4)
    L.add(stat("Oldest pending task", "Age of the oldest pending task (worst workspace). Yellow from 10 min, red from "
               "30 min (alert ClawMeshPendingTasksStuck). Per workspace only: not filtered by team, env, provider "
               "or model.",
               f"max(clawmesh_tasks_oldest_pending_age_seconds{{{WS}}})", "s",
               [("green", None), ("yellow", 600), ("red", 1800)]), 3, 4)
    L.add(stat("Throughput", "Tasks finished (completed, failed or cancelled) per minute over the last 5 minutes. "
               "Zero while tasks are pending is ClawMeshThroughputZero.",
               f"sum({rate5m('clawmesh_tasks_finished_total')}) * 60", "cpm",
               [("blue", None)]), 3, 4)
    L.add(stat("Error ratio 5m", "Failed / all finished tasks over the last 5 minutes. Yellow from 10 %, red from 25 % "
               "(alert ClawMeshTaskErrorRatioHigh, which also needs 20 tasks in 5 minutes).",
               f"sum({rate5m('clawmesh_tasks_finished_total', failed)}) "
               f"/ sum({rate5m('clawmesh_tasks_finished_total')})",
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], no_value="no tasks", decimals=1), 3, 4)
    L.add(stat("Error ratio 1h", "Failed / all finished tasks over the last hour. Yellow from 10 % "
               "(alert ClawMeshTaskErrorRatioElevated).",
               f"sum({rate5m('clawmesh_tasks_finished_total', failed, '1h')}) "
               f"/ sum({rate5m('clawmesh_tasks_finished_total', window='1h')})",
               "percentunit", [("green", None), ("yellow", 0.1), ("red", 0.25)], no_value="no tasks", decimals=1), 3, 4)
    L.add(stat("Workspaces not syncing", "Selected workspaces whose last sync failed (clawmesh_up == 0): their numbers "
               "above are frozen. Details on the exporter dashboard.",
               f"count(clawmesh_up{{{WS}}} == 0) or vector(0)", "none", [("green", None), ("red", 1)]), 3, 4)

    L.row("Agents")
    L.add(timeseries("Agents by status", "Agents per status, summed over the selected workspaces. "
                     "Unknown statuses appear by name or as \"other\".",
                     [(f"sum by (status) (clawmesh_agents{{{F}}})", "{{status}}")], "none", stack=True), 8, 8)
    L.add(timeseries("Active agents by workspace", "Agents idle or busy per workspace.",
                     [(f"sum by (workspace) (clawmesh_agents_active{{{F}}})", "{{workspace}}")], "none"), 8, 8)
    L.add(timeseries("Stale heartbeats by team and provider", "Agents in status idle or busy whose last heartbeat is "
                     "older than the exporter's --agents.heartbeat-stale-after (default 90 s, three missed beats), by "
                     "team and provider: they claim to run but may be gone. Above 0 for 10 min is "
                     f"ClawMeshAgentHeartbeatsStale. \"{NONE}\": that breakdown is off.",
                     [(by("provider", by("team", f"sum by (team, provider) (clawmesh_agents_heartbeat_stale{{{F}}})")),
                       "{{team}} {{provider}}")], "none", stack=True,
                     steps=[("transparent", None), ("red", 1)], threshold_style="dashed"), 8, 8)

    L.row("Tasks")
    L.add(timeseries("Tasks pending and running", "Current pending and running tasks per workspace.",
                     [(f"sum by (workspace, status) (clawmesh_tasks{{{F}}})", "{{workspace}} {{status}}")], "none"), 8, 8)
    L.add(timeseries("Throughput by status", "Tasks reaching a terminal status per minute (5-minute rate).",
                     [(f"sum by (status) ({rate5m('clawmesh_tasks_finished_total')}) * 60", "{{status}}")],
                     "cpm", stack=True), 8, 8)
    L.add(timeseries("Oldest pending task age", "How long the oldest pending task has waited, per workspace. "
                     "The dashed line is the ClawMeshPendingTasksStuck threshold (30 min). Per workspace only: not "
                     "filtered by team, env, provider or model.",
                     [(f"clawmesh_tasks_oldest_pending_age_seconds{{{WS}}}", "{{workspace}}")], "s",
                     steps=[("transparent", None), ("red", 1800)], threshold_style="dashed"), 8, 8)
    L.add(timeseries("Task error ratio", "Failed / all finished tasks per workspace over 5 minutes and 1 hour. "
                     "Gaps mean nothing finished. Dashed lines: warning 10 %, critical 25 %.",
                     [(f"sum by (workspace) ({rate5m('clawmesh_tasks_finished_total', failed)}) "
                       f"/ sum by (workspace) ({rate5m('clawmesh_tasks_finished_total')})", "{{workspace}} 5m"),
                      (f"sum by (workspace) ({rate5m('clawmesh_tasks_finished_total', failed, '1h')}) "
                       f"/ sum by (workspace) ({rate5m('clawmesh_tasks_finished_total', window='1h')})",
                       "{{workspace}} 1h")],
                     "percentunit", steps=[("transparent", None), ("yellow", 0.1), ("red", 0.25)],
                     threshold_style="dashed"), 12, 8)
    L.add(timeseries("Failures by error code", "Failed tasks per minute by error code (timeout, model_error, "
                     "skill_error, invalid_input, internal, ...), summed over the selected workspaces.",
                     [(f"sum by (code) ({rate5m('clawmesh_task_failures_total')}) * 60", "{{code}}")],
                     "cpm", stack=True), 12, 8)

    where_row(L)

    L.row("Durations")
    L.add(timeseries("Queue duration p50 / p95 / p99", "Time from task creation to start, per workspace, "
                     "from the histogram clawmesh_task_queue_duration_seconds over 5 minutes.",
                     quantiles("clawmesh_task_queue_duration_seconds"), "s"), 12, 8)
    L.add(timeseries("Run duration p50 / p95 / p99", "Time from task start to finish, per workspace, "
                     "from the histogram clawmesh_task_run_duration_seconds over 5 minutes.",
                     quantiles("clawmesh_task_run_duration_seconds"), "s"), 12, 8)
    for what, metric in (("Queue", "clawmesh_task_queue_duration_seconds"),
                         ("Run", "clawmesh_task_run_duration_seconds")):
        L.add(timeseries(f"{what} duration p95 {NATIVE}",
                         f"The p95 of {metric} per workspace over 5 minutes from its native histogram, "
                         "beside the classic one: finer buckets (error under 3 % at schema 5 and above). "
                         "Empty unless Prometheus scrapes native histograms (docs/formats.md).",
                         [(f"histogram_quantile(0.95, sum by (workspace) ({rate5m(metric)}))",
                           "{{workspace}} p95")], "s"), 12, 8)

    L.row("Tokens")
    L.add(timeseries("Tokens per minute", "Model tokens consumed by finished tasks per minute, input and output, "
                     "summed over the selected workspaces.",
                     [(f"sum by (kind) ({rate5m('clawmesh_task_tokens_total')}) * 60", "{{kind}}")],
                     "short", stack=True), 12, 8)
    L.add(timeseries("Tokens per minute by workspace", "Input plus output tokens per minute, per workspace.",
                     [(f"sum by (workspace) ({rate5m('clawmesh_task_tokens_total')}) * 60", "{{workspace}}")],
                     "short"), 12, 8)

    spend_row(L)

    L.row("Error budget")
    L.add(slo_panel(stat("Task success budget left (lowest)", "Smallest share of the task-success error budget left "
                         "in the SLO window among the selected workspaces and providers. Red under 10 %, yellow "
                         "under 50 %.",
                         f'min(workspace_provider:clawmesh_slo_task_success:error_budget_remaining30d{{{WS}, provider=~"$provider"}})',
                         "percentunit", [("red", None), ("yellow", 0.1), ("green", 0.5)], decimals=0)), 4, 8)
    L.add(slo_panel(timeseries("Task success budget left", "Share of the task-success error budget left in the SLO "
                               "window, per workspace and provider: 100 % untouched, 0 % spent.",
                               [(f'workspace_provider:clawmesh_slo_task_success:error_budget_remaining30d{{{WS}, provider=~"$provider"}}',
                                 "{{workspace}} {{provider}}")], "percentunit", min0=False, max_=1,
                               steps=[("transparent", None), ("red", 0)], threshold_style="dashed")), 8, 8)
    L.add(slo_panel(timeseries("Task success burn rate 1h", "How fast the task-success error budget burns over the "
                               "last hour, per workspace and provider: 1 spends it exactly over the SLO window, "
                               "14.4 (dashed) spends 2 % of a 30-day budget in an hour.",
                               [(f'workspace_provider:clawmesh_slo_task_success:burn_rate1h{{{WS}, provider=~"$provider"}}',
                                 "{{workspace}} {{provider}}")], "none",
                               steps=[("transparent", None), ("red", 14.4)], threshold_style="dashed")), 6, 8)
    L.add(slo_panel(timeseries("Queue time budget left", "Share of the queue-time error budget (tasks started "
                               "within the SLO's queue time) left in the SLO window, per workspace.",
                               [(f"workspace_provider:clawmesh_slo_queue_time:error_budget_remaining30d{{{WS}}}", "{{workspace}}")],
                               "percentunit", min0=False, max_=1,
                               steps=[("transparent", None), ("red", 0)], threshold_style="dashed")), 6, 8)

    L.row("Webhooks")
    L.add(timeseries("Webhook deliveries by result", "Webhook deliveries per minute that named a selected workspace, "
                     "by result (accepted, duplicate, ignored, unknown_type, bad_signature, too_large, bad_request, "
                     "stale, unknown_workspace, queue_full). Empty when the receiver is off (no --webhook.secret-file).",
                     [(f"sum by (result) (rate(clawmesh_webhook_requests_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{result}}")], "cpm", stack=True), 6, 8)
    L.add(timeseries("Missed webhook events", "Terminal task transitions polling counted first and no webhook brought "
                     "within --webhook.missed-grace, per minute and workspace: deliveries are being lost. The numbers "
                     "stay right (polling counted the tasks), only slower. See ClawMeshWebhookEventsMissed.",
                     [(f"sum by (workspace) (rate(clawmesh_webhook_missed_events_total{{{WS}}}[$__rate_interval])) * 60",
                       "{{workspace}}")], "cpm", draw_style="bars"), 6, 8)
    L.add(timeseries("Time since the last webhook event", "How long since the last verified webhook event of each "
                     "workspace arrived. Growing while tasks finish: ClawMesh stopped delivering (endpoint, proxy, "
                     "subscription).",
                     [(f"time() - clawmesh_webhook_last_event_timestamp_seconds{{{WS}}}", "{{workspace}}")], "s"), 6, 8)
    L.add(timeseries("Unattributed webhook refusals", "Deliveries refused before a verified body named a workspace, "
                     "per minute, for the whole receiver (not per workspace), by result. bad_signature rising: a wrong "
                     "or rotated secret, or someone probing (ClawMeshWebhookSignatureFailures).",
                     [("sum by (result) (rate(clawmesh_webhook_unattributed_requests_total[$__rate_interval])) * 60",
                       "{{result}}")], "cpm", stack=True), 6, 8)
    return dashboard("clawmesh-fleet", "ClawMesh / Fleet overview",
                     "Agents, tasks, throughput, errors, durations, tokens and spend of ClawMesh workspaces, where "
                     "they happen (team, env, provider, model), budgets, error budgets and webhooks "
                     "(clawmesh-exporter).",
                     L.panels, dims=True)


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
    L.row("Resources")
    # process_* is every client library's: only the targets that are a
    # clawmesh-exporter, whatever their job.
    ours = "and on (job, instance) clawmesh_exporter_build_info"
    L.add(timeseries("Memory vs limit", "Resident memory of each exporter process and the memory limit of its "
                     "cgroup (container limit or systemd MemoryMax=). ClawMeshExporterMemoryNearLimit fires past "
                     "85 % of the limit for 10 min; no limit line: the process runs without one. Sizing: "
                     "docs/deploying.md, Scaling.",
                     [(f"process_resident_memory_bytes {ours}", "{{instance}} resident"),
                      ("clawmesh_exporter_memory_limit_bytes", "{{instance}} limit")], "bytes"), 8, 8)
    L.add(timeseries("File descriptors vs limit", "Open file descriptors of each exporter process (scrapers', "
                     "webhook senders' and API connections, checkpoint files) and its soft open-files limit "
                     "(LimitNOFILE). ClawMeshExporterFileDescriptorsNearLimit fires past 80 % for 10 min; keep "
                     "--web.max-connections well below the limit.",
                     [(f"process_open_fds {ours}", "{{instance}} open"),
                      (f"process_max_fds {ours}", "{{instance}} limit")], "short"), 8, 8)
    L.add(timeseries("CPU", "CPU time each exporter process uses, user and system, per second of wall time: "
                     "100 % is one core.",
                     [(f"rate(process_cpu_seconds_total[$__rate_interval]) {ours}", "{{instance}}")],
                     "percentunit"), 8, 8)
    return dashboard("clawmesh-exporter", "ClawMesh / Exporter health",
                     "Health of clawmesh-exporter itself: scrape, sync, ClawMesh API requests, clock skew and "
                     "refused objects, rate limit, API key, OTLP export, and the process's memory, file "
                     "descriptors and CPU against their limits.", L.panels)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, d in (("clawmesh-fleet.json", fleet()), ("clawmesh-exporter.json", exporter())):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
