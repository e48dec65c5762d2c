"""Prometheus: the conventions of the alert and recording rules and their tests; the config copy promtool checks."""
import pathlib
import re

import yaml

from . import paths
from .common import Problems, alert_rules, dashboards, data_panels, duration_seconds, load_yaml, recording_rules, rel
from .promql import aggregations, metric_names

ALERT_GROUPS = ["gateway", "worker", "rpc", "scylladb", "nats", "redis", "postgresql"]
SEVERITIES = {"critical", "warning"}


def check_rules():
    p = Problems()
    doc = load_yaml(paths.ALERTS)
    names = [g["name"] for g in doc["groups"]]
    p.check(names == ALERT_GROUPS, rel(paths.ALERTS), f"groups are {names}, want {ALERT_GROUPS}")
    seen = _check_alerts(p)
    _check_recording_names(p)
    _check_namespace_kept(p)
    _check_recordings_used(p)
    _check_rule_tests(p, seen)
    return p.done(f"{len(seen)} alerts in {len(names)} groups, each with a firing and a not-firing test; "
                  "every aggregation keeps namespace")


def _check_alerts(p):
    """Names, severity, `for` and annotations of every alert; returns the alert names."""
    seen = set()
    for group, rule in alert_rules():
        name = rule.get("alert")
        where = f"{rel(paths.ALERTS)} group {group}"
        if not p.check(name, where, f"a recording rule belongs in {rel(paths.RECORDING)}: {rule.get('record')}"):
            continue
        where = f"{where} alert {name}"
        p.check(name not in seen, where, "duplicate alert name")
        seen.add(name)
        p.check(re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), where, "alert names are CamelCase")
        severity = rule.get("labels", {}).get("severity")
        p.check(severity in SEVERITIES, where, f"severity {severity!r} not in {sorted(SEVERITIES)}")
        try:
            hold = duration_seconds(rule.get("for", "0s"))
        except ValueError as err:
            p.add(where, str(err))
            hold = 0
        p.check(hold >= 60, where, f"`for` {rule.get('for')} is under 1m: one bad scrape would notify")
        if severity == "critical":
            p.check(hold <= 300, where, f"`for` {rule.get('for')}: a critical alert should page within 5m")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            p.check(str(ann.get(key, "")).strip(), where, f"annotation {key} missing or empty")
    return seen


def _check_recording_names(p):
    for group in load_yaml(paths.RECORDING)["groups"]:
        for rule in group["rules"]:
            record = rule.get("record")
            if p.check(record, f"{rel(paths.RECORDING)} group {group['name']}", "only recording rules belong here"):
                p.check(re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", record),
                        f"{rel(paths.RECORDING)} {record}", "recording rule names are level:metric:operations")


def _check_namespace_kept(p):
    # Aggregations keep `namespace`: one Prometheus watches every namespace, and summing staging into production
    # hides an outage (a worker down in one namespace while another is up would not fire ScoreWorkerDown).
    exprs = [(f"{rel(paths.ALERTS)} {r['alert']}", r["expr"]) for _, r in alert_rules()]
    exprs += [(f"{rel(paths.RECORDING)} {r['record']}", r["expr"])
              for g in load_yaml(paths.RECORDING)["groups"] for r in g["rules"]]
    for where, expr in exprs:
        for op, clause, labels in aggregations(expr):
            if clause == "without":
                p.check("namespace" not in labels, where, f"{op} without (...) drops namespace")
            else:
                grouping = "by (" + ", ".join(labels) + ")" if clause else "(...)"
                p.check("namespace" in labels, where, f"{op} {grouping} drops namespace: keep it in by (...)")


def _check_recordings_used(p):
    """Every recording rule is used by an alert or a dashboard panel."""
    users = " ".join([rule["expr"] for _, rule in alert_rules()] +
                     [t.get("expr", "") for _, board in dashboards() for pn in data_panels(board)
                      for t in pn.get("targets", [])])
    for record in recording_rules():
        p.check(record in metric_names(users) or re.search(re.escape(record) + r"\b", users),
                f"{rel(paths.RECORDING)} {record}", "used by no alert and no dashboard panel")


def _check_rule_tests(p, seen):
    """Every alert: at least one test where it fires and one where it must not."""
    firing, quiet = set(), set()
    group_names = [g["name"] for f in (paths.RECORDING, paths.ALERTS) for g in load_yaml(f)["groups"]]
    test_files = sorted(paths.RULE_TESTS.glob("*_test.yml"))
    p.check(test_files, rel(paths.RULE_TESTS), "no *_test.yml files")
    for path in test_files:
        doc = load_yaml(path)
        files = {(path.parent / f).resolve() for f in doc.get("rule_files", [])}
        p.check({paths.RECORDING.resolve(), paths.ALERTS.resolve()} <= files, rel(path),
                "rule_files must load recording.yml and alerts.yml")
        order = doc.get("group_eval_order")
        p.check(order == group_names, rel(path),
                "group_eval_order must list the recording groups first, then the alert groups, as in the files")
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                p.check(name in seen, rel(path), f"test for unknown alert {name}")
                (firing if case.get("exp_alerts") else quiet).add(name)
    for name in sorted(seen):
        p.check(name in firing, rel(paths.RULE_TESTS), f"{name} has no test case in which it fires")
        p.check(name in quiet, rel(paths.RULE_TESTS), f"{name} has no test case in which it must not fire")


def derive_config(src, out):
    """A copy of prometheus.yml that Debian's promtool can check: static targets instead of Kubernetes SD."""
    src = pathlib.Path(src).resolve()
    doc = load_yaml(src)
    swapped = 0

    def swap(cfg, target):
        nonlocal swapped
        if "kubernetes_sd_configs" in cfg:
            del cfg["kubernetes_sd_configs"]
            cfg.setdefault("static_configs", []).append({"targets": [target]})
            swapped += 1

    for cfg in doc.get("scrape_configs", []):
        swap(cfg, "127.0.0.1:9100")
    for cfg in doc.get("alerting", {}).get("alertmanagers", []):
        swap(cfg, "127.0.0.1:9093")
    doc["rule_files"] = [str(src.parent / f) for f in doc.get("rule_files", [])]
    pathlib.Path(out).write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"{swapped} kubernetes_sd_configs replaced by static_configs in {out}")
    return 0 if swapped else 1
