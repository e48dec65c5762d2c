"""The metrics contract: docs/metrics.md documents every metric the rules and dashboards use, histogram
thresholds sit on documented bucket boundaries, and (on a /metrics scrape) the worker exports all of it."""
import pathlib
import re

from . import paths
from .common import (
    WORKER_PREFIX,
    Problems,
    alert_rules,
    bucket_in,
    dashboards,
    data_panels,
    recording_rules,
    rel,
    threshold_steps,
)
from .promql import alert_threshold, equality_matchers, metric_names, quantile_histograms

# Labels Prometheus adds to every series of a target: a scrape cannot show them.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node", "container", "app"}


def documented_buckets():
    """{histogram: [bounds]} from the bucket tables of docs/metrics.md."""
    out = {}
    for m in re.finditer(r"^\| `([a-z0-9_]+)` \| ([0-9., ]+) \|", paths.METRICS_DOC.read_text(), re.M):
        out[m.group(1)] = [float(x) for x in m.group(2).split(",")]
    return out


def documented_names():
    return set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", paths.METRICS_DOC.read_text()))


def all_rule_exprs():
    """(where, expr) for every alert, recording rule and panel query."""
    for _, rule in alert_rules():
        yield f"{rel(paths.ALERTS)} {rule['alert']}", rule["expr"]
    for record, expr in recording_rules().items():
        yield f"{rel(paths.RECORDING)} {record}", expr
    for path, board in dashboards():
        for panel in data_panels(board):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"{rel(path)} panel {panel.get('title')!r}", target["expr"]


def check_contract():
    p = Problems()
    documented = documented_names()
    records = recording_rules()
    used = set()
    for where, expr in all_rule_exprs():
        for name in metric_names(expr):
            if ":" in name:
                p.check(name in records, where, f"recording rule {name} is not defined in {rel(paths.RECORDING)}")
                continue
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            p.check(name in documented or base in documented, where,
                    f"{name} is not documented in {rel(paths.METRICS_DOC)}")
    buckets = documented_buckets()
    p.check(buckets, rel(paths.METRICS_DOC), "no bucket tables found")
    checked = _check_alert_thresholds(p, records, buckets) + _check_panel_thresholds(p, records, buckets)
    return p.done(f"{len(used)} metric names documented; {checked} histogram thresholds on bucket boundaries")


def _check_alert_thresholds(p, records, buckets):
    """Alert thresholds on histogram quantiles must be bucket boundaries; returns how many were checked."""
    checked = 0
    for _, rule in alert_rules():
        found = alert_threshold(rule["expr"])
        if not found:
            continue
        record, _, value = found
        for hist in quantile_histograms(records[record]):
            if hist not in buckets:
                continue  # third-party histograms (ScyllaDB) have fixed buckets
            checked += 1
            p.check(bucket_in(value, buckets[hist]), f"{rule['alert']}",
                    f"threshold {value:g} on {hist} is not a bucket boundary {buckets[hist]}")
    return checked


def _check_panel_thresholds(p, records, buckets):
    """So must every dashboard threshold on such a quantile."""
    checked = 0
    for path, board in dashboards():
        for panel in data_panels(board):
            steps = [s["value"] for s in threshold_steps(panel) if s.get("value") is not None]
            for target in panel.get("targets", []):
                for name in metric_names(target.get("expr", "")):
                    for hist in quantile_histograms(records.get(name, "")) & set(buckets):
                        for value in steps:
                            checked += 1
                            p.check(bucket_in(value, buckets[hist]), f"{rel(path)} panel {panel['title']!r}",
                                    f"threshold {value:g} on {hist} is not a bucket boundary")
    return checked


def parse_scrape(text):
    """({sample name: [labels dict]}, {family: type}) of a text exposition."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+", line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
                samples.setdefault(m.group(1), []).append(labels)
    return samples, types


def contract_table():
    """{metric: (type, {label: [values]})} from the worker table of docs/metrics.md."""
    text = paths.METRICS_DOC.read_text()
    section = text.split("## Worker", 1)[1].split("\n## ", 1)[0]
    out = {}
    row = r"^\| `(score_worker_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*)\| ([^|]*)\|"
    for m in re.finditer(row, section, re.M):
        values = {}
        for lm in re.finditer(r"`(\w+)` ∈ ((?:`\w+`(?:, )?)+)", m.group(4)):
            values[lm.group(1)] = re.findall(r"`(\w+)`", lm.group(2))
        out[m.group(1)] = (m.group(2), values)
    return out


def check_metrics_contract(scrape_path):
    p = Problems()
    samples, types = parse_scrape(pathlib.Path(scrape_path).read_text())
    used = _check_used_exported(p, samples)
    table = _check_contract_table(p, scrape_path, samples, types)
    _check_exported_buckets(p, scrape_path, samples)
    return p.done(f"{len(used)} score_worker_* names used by rules and dashboards are exported; "
                  f"{len(table)} contract metrics with their types and label values")


def _check_used_exported(p, samples):
    """Every score_worker_* name and label value the rules and dashboards select is in the scrape."""
    used, matchers = {}, []
    for where, expr in all_rule_exprs():
        for name in metric_names(expr):
            if name.startswith(WORKER_PREFIX):
                used.setdefault(name, where)
        matchers += [(where, *m) for m in equality_matchers(expr) if m[0].startswith(WORKER_PREFIX)]
    for name, where in sorted(used.items()):
        p.check(name in samples, where, f"{name} is not exported")
    for where, name, label, value in matchers:
        if label in TARGET_LABELS or value.startswith("$"):
            continue  # target labels, added by Prometheus
        p.check(any(s.get(label) == value for s in samples.get(name, [])), where,
                f'{name}{{{label}="{value}"}} is not exported (pre-initialise every label value)')
    return used


def _check_contract_table(p, scrape_path, samples, types):
    """Documented families: exported, with the documented type and every documented label value."""
    table = contract_table()
    p.check(len(table) >= 14, rel(paths.METRICS_DOC),
            f"only {len(table)} worker metrics parsed from the contract table")
    for name, (kind, values) in table.items():
        if p.check(name in types, scrape_path, f"{name} ({kind}) is not exported"):
            p.check(types[name] == kind, scrape_path, f"{name} is a {types[name]}, the contract says {kind}")
        series = samples.get(name + "_bucket" if kind == "histogram" else name, [])
        for label, wanted in values.items():
            have = {s.get(label) for s in series}
            for v in wanted:
                p.check(v in have, scrape_path, f'{name}{{{label}="{v}"}} is not exported')
    return table


def _check_exported_buckets(p, scrape_path, samples):
    """Thresholds of the rules on worker histograms are exported bucket boundaries."""
    records = recording_rules()
    buckets = documented_buckets()
    for _, rule in alert_rules():
        found = alert_threshold(rule["expr"])
        if not found:
            continue
        for hist in quantile_histograms(records[found[0]]):
            if not hist.startswith(WORKER_PREFIX):
                continue
            les = {float(s["le"]) for s in samples.get(hist + "_bucket", []) if s.get("le") not in (None, "+Inf")}
            p.check(bucket_in(found[2], les), rule["alert"], f"threshold {found[2]:g} is not an exported le of {hist}")
            if hist in buckets:
                p.check(sorted(les) == sorted(buckets[hist]), scrape_path,
                        f"{hist} buckets {sorted(les)} differ from docs/metrics.md {buckets[hist]}")
