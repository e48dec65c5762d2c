"""Grafana dashboards: structure, title + unit per panel, the datasource variable, thresholds = alert rules; every
panel query as a recording rule for `promtool check rules`."""
import math
import pathlib
import re

import yaml

from . import paths
from .common import DASHBOARD_VARS, Problems, alert_rules, dashboards, data_panels, rel, substitute, threshold_steps
from .promql import alert_threshold, metric_names

# Words in panel descriptions that name an alert (checked to exist).
ALERT_NAME = r"\b(?:Gateway|ScoreWorker|Rpc|Scylla|Nats|Redis|Postgresql)(?:[A-Z][a-z]+)+\b"
ROUTING_P99 = "job:gateway_routing_duration_seconds:p99_rate5m"


def check_dashboards():
    p = Problems()
    alerts = {rule["alert"]: rule for _, rule in alert_rules()}
    mirrored = {}  # recording rule -> (alert, threshold)
    for name, rule in alerts.items():
        found = alert_threshold(rule["expr"])
        if found and found[1] in (">", ">="):
            mirrored.setdefault(found[0], []).append((name, found[2]))
    uids, count = set(), 0
    boards = list(dashboards())
    p.check(len(boards) >= 2, rel(paths.DASHBOARDS), "expected the gateway and worker dashboards")
    for path, board in boards:
        where = rel(path)
        p.check(board.get("uid") and board["uid"] not in uids, where, "missing or duplicate uid")
        uids.add(board.get("uid"))
        _check_board(p, where, board)
        ids = set()
        for panel in data_panels(board):
            count += 1
            _check_panel(p, where, panel, ids, alerts, mirrored)
    # The gateway's routing latency panel: yellow at 20 ms, red at 50 ms (the wording).
    for path, board in boards:
        for panel in data_panels(board):
            if any(ROUTING_P99 in t.get("expr", "") for t in panel.get("targets", [])):
                got = {(s.get("color"), s.get("value")) for s in threshold_steps(panel)}
                p.check({("yellow", 0.02), ("red", 0.05)} <= got, f"{rel(path)} panel {panel['title']!r}",
                        f"routing p99 thresholds must be yellow 0.02 and red 0.05, got {sorted(got, key=str)}")
    return p.done(f"{count} panels in {len(boards)} dashboards: title, unit, datasource variable, thresholds = alerts")


def _check_board(p, where, board):
    """Title, refresh and the template variables of one dashboard."""
    p.check(board.get("title"), where, "no title")
    p.check(board.get("refresh") == "30s", where, f"refresh is {board.get('refresh')!r}, want '30s'")
    variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    p.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus", where,
            "needs a `datasource` variable of type datasource (prometheus)")
    p.check(variables.get("job", {}).get("type") == "query", where, "needs a `job` query variable")
    for var in set(variables) - {"datasource"}:
        p.check(var in DASHBOARD_VARS, where, f"variable {var!r} has no stand-in value for the PromQL check")


def _check_panel(p, where, panel, ids, alerts, mirrored):
    """Title, id, unit, datasource and queries of one panel; its thresholds mirror the alerts on its rules."""
    title = panel.get("title", "")
    pw = f"{where} panel {title or panel.get('id')!r}"
    p.check(title.strip(), pw, "no title")
    p.check(panel.get("id") not in ids, pw, "duplicate panel id")
    ids.add(panel.get("id"))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    p.check(unit, pw, "no unit (fieldConfig.defaults.unit)")
    p.check(panel.get("datasource", {}).get("uid") == "${datasource}", pw, "datasource is not ${datasource}")
    targets = panel.get("targets", [])
    p.check(targets, pw, "no queries")
    for target in targets:
        expr = target.get("expr", "")
        p.check(expr.strip(), pw, f"query {target.get('refId')} is empty")
        p.check(target.get("datasource", {}).get("uid") == "${datasource}", pw,
                f"query {target.get('refId')} datasource is not ${{datasource}}")
        for m in re.finditer(r"\b(rate|irate|increase|delta|deriv)\s*\(", expr):
            window = re.match(r"[^\[]*\[([^\]]*)\]", expr[m.end():])
            p.check(window and window.group(1) == "$__rate_interval", pw,
                    f"{m.group(1)}() should use [$__rate_interval]: {expr}")
        for var in re.findall(r"\$\{?(\w+)", expr):
            p.check(var in DASHBOARD_VARS, pw, f"unknown variable ${var}")
    # Thresholds mirror the alert rules that share the panel's recording rule.
    steps = threshold_steps(panel)
    for target in targets:
        for name in metric_names(target.get("expr", "")):
            for alert, value in mirrored.get(name, []):
                ok = any(s.get("color") == "red" and s.get("value") is not None and
                         math.isclose(s["value"], value) for s in steps)
                p.check(ok, pw, f"needs a red threshold at {value:g}, the threshold of {alert}")
    for name in re.findall(ALERT_NAME, panel.get("description", "")):
        p.check(name in alerts, pw, f"description names an unknown alert {name}")


def write_dashboard_rules(out):
    """Every panel query as a recording rule (`promtool check rules` then parses each as PromQL)."""
    rules = []
    for path, board in dashboards():
        uid = re.sub(r"\W", "_", board.get("uid", path.stem))
        for panel in data_panels(board):
            for target in panel.get("targets", []):
                expr = substitute(target.get("expr", ""), DASHBOARD_VARS)
                rules.append({"record": f"dashboard:{uid}_panel{panel.get('id')}:{target.get('refId', 'A').lower()}",
                              "expr": expr})
    pathlib.Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    print(f"{len(rules)} panel queries written to {out}")
    return 0
