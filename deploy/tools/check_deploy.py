#!/usr/bin/env python3
"""The checks of deploy/, docs/metrics.md and docs/runbooks/ that no off-the-shelf tool does.

Run by scripts/check-deploy.sh (one check per call) and scripts/check-metrics-contract.sh. Each check prints
what it found and exits 1 when something is wrong. Needs PyYAML; everything else is the standard library.

    check_deploy.py rules              alert conventions, the seven groups, a firing and a not-firing test each;
                                       every aggregation in alerts and recording rules keeps `namespace`
    check_deploy.py runbooks           every runbook_url is absolute, under the one base of
                                       deploy/prometheus/runbook-base-url (rule files and PrometheusRule
                                       alike), and resolves to a file and heading; one page per alert
    check_deploy.py contract           metrics used by rules and dashboards are documented in docs/metrics.md;
                                       histogram thresholds sit on documented bucket boundaries
    check_deploy.py dashboards         structure, title + unit, datasource variable, thresholds = alert rules
    check_deploy.py dashboard-rules OUT  every panel query as a recording rule, for `promtool check rules`
    check_deploy.py derive-config IN OUT prometheus.yml with kubernetes_sd_configs swapped for static_configs
    check_deploy.py kubernetes [DIR]   Deployment, ConfigMap, PDB, NetworkPolicy, KEDA and PodMonitor invariants;
                                       recommended app.kubernetes.io labels on every object and pod template;
                                       credentials: TLS on, CA files from mounted Secrets, the worker's and the
                                       migration Job's database roles apart, the Job inside a NetworkPolicy
    check_deploy.py kubernetes-fixtures  each broken copy of deploy/kubernetes in tools/fixtures/kubernetes.yaml
                                       fails `kubernetes` with its expected problem (and the real one passes)
    check_deploy.py crs-json           the custom resources as JSON, for validate_crs.mjs
    check_deploy.py builtin-manifests  the manifests of built-in kinds, for kubernetes-validate
    check_deploy.py compose            docker-compose.yml references, Grafana provisioning, compose Prometheus
    check_deploy.py dockerfile         COPY sources, multi-stage, non-root user, default command `run`
    check_deploy.py metrics-contract SCRAPE   a /metrics scrape exports every score_worker_* series used
    check_deploy.py live-dashboards URL  every panel query, asked of the Prometheus at URL (which scrapes a live
                                       worker under load, scripts/check-dashboards-live.sh), returns a series
                                       with a value; every rule evaluates without error
"""
import json
import math
import pathlib
import re
import sys
import tomllib
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sync_generated  # noqa: E402  (the runbook base and the package version, read the same way)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
ALERTS = PROM / "alerts.yml"
RECORDING = PROM / "recording.yml"
RULE_TESTS = PROM / "tests"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S = DEPLOY / "kubernetes"
K8S_FIXTURES = DEPLOY / "tools" / "fixtures" / "kubernetes.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOKS = ROOT / "docs" / "runbooks"
DEFAULT_CONFIG = ROOT / "config" / "default.toml"

ALERT_GROUPS = ["gateway", "worker", "rpc", "scylladb", "nats", "redis", "postgresql"]
SEVERITIES = {"critical", "warning"}
RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation", "Escalation"]
WORKER_JOB = "score-worker"
WORKER_PREFIX = "score_worker_"
# Grafana variables and what they stand for when a panel query is compiled.
# `read_job`: the jobs of the services that link the read API (all of them: `.+`).
DASHBOARD_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "job": WORKER_JOB,
                  "read_job": ".+"}
# The same for the live check: Prometheus scrapes every second, so a 30 s window holds 30 samples.
LIVE_VARS = dict(DASHBOARD_VARS, __rate_interval="30s", __interval="1s", __range="5m")
KEDA_NATS_KEYS = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
                  "activationLagThreshold", "useHttps"}
# Words in panel descriptions that name an alert (checked to exist).
ALERT_NAME = r"\b(?:Gateway|ScoreWorker|Rpc|Scylla|Nats|Redis|Postgresql)(?:[A-Z][a-z]+)+\b"
KEDA_NATS_REQUIRED = {"natsServerMonitoringEndpoint", "account", "stream", "consumer"}


class Problems:
    """Collects findings; `done()` prints them and gives the exit status."""

    def __init__(self):
        self.items = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")

    def check(self, cond, where, what):
        if not cond:
            self.add(where, what)
        return cond

    def done(self, summary):
        for item in self.items:
            print(f"  {item}")
        print(summary if not self.items else f"{len(self.items)} problem(s)")
        return 1 if self.items else 0


def rel(path):
    path = pathlib.Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:  # a fixture's copy of the manifests
        return str(path)


def load_yaml(path):
    return yaml.safe_load(pathlib.Path(path).read_text())


def load_yaml_all(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def duration_seconds(text):
    """Prometheus/worker duration ("90s", "1m30s", "250ms", "20s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def alert_rules():
    """(group name, rule) for every alerting rule."""
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule


def recording_rules():
    return {r["record"]: r["expr"] for g in load_yaml(RECORDING)["groups"] for r in g["rules"]}


def dashboards():
    for path in sorted(DASHBOARDS.glob("*.json")):
        yield path, json.loads(path.read_text())


def panels(board):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def data_panels(board):
    return [p for p in panels(board) if p.get("type") != "row"]


# ---------------------------------------------------------------------------------------------- PromQL, cheaply

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
            "bool", "inf", "nan"}


def _strip(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)


def metric_names(expr):
    """Metric and recording-rule names a PromQL expression selects (not functions, keywords or labels)."""
    s = _strip(expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of 1e6, a duration unit
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def equality_matchers(expr):
    """(metric, label, value) for every `metric{label="value"}` equality matcher (not !=, =~, !~)."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        for lm in re.finditer(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', m.group(2)):
            if lm.group(2) == "=":
                out.append((m.group(1), lm.group(1), lm.group(3)))
    return out


def comparisons(expr):
    """(name, operator, number) for every `name > number` style comparison, in order."""
    return [(m.group(1), m.group(2), float(m.group(3)))
            for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(>=|<=|>|<|==|!=)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\b",
                                 expr)]


AGGREGATIONS = ("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio")


def _closing(s, i):
    """Index just past the parenthesis that closes the one opening at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"(": 1, ")": -1}.get(s[j], 0)
        if depth == 0:
            return j + 1
    return len(s)


def aggregations(expr):
    """(operator, 'by'/'without'/None, [labels]) for every aggregation in `expr`, prefix or suffix clause."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    out = []
    for m in re.finditer(r"\b(%s)\s*(?:(by|without)\s*\(([^)]*)\)\s*)?\(" % "|".join(AGGREGATIONS), s):
        if m.group(2):
            out.append((m.group(1), m.group(2), [x.strip() for x in m.group(3).split(",") if x.strip()]))
            continue
        after = s[_closing(s, m.end() - 1):]
        suffix = re.match(r"\s*(by|without)\s*\(([^)]*)\)", after)
        if suffix:
            out.append((m.group(1), suffix.group(1), [x.strip() for x in suffix.group(2).split(",") if x.strip()]))
        else:
            out.append((m.group(1), None, []))
    return out


def alert_threshold(expr):
    """The comparison that defines an alert: its first `recording_rule > number`."""
    records = recording_rules()
    for name, op, value in comparisons(expr):
        if name in records:
            return name, op, value
    return None


def quantile_histograms(expr):
    """Histogram families whose buckets a histogram_quantile in `expr` reads."""
    if "histogram_quantile" not in expr:
        return set()
    return {n[: -len("_bucket")] for n in metric_names(expr) if n.endswith("_bucket")}


def documented_buckets():
    """{histogram: [bounds]} from the bucket tables of docs/metrics.md."""
    out = {}
    for m in re.finditer(r"^\| `([a-z0-9_]+)` \| ([0-9., ]+) \|", METRICS_DOC.read_text(), re.M):
        out[m.group(1)] = [float(x) for x in m.group(2).split(",")]
    return out


def documented_names():
    return set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", METRICS_DOC.read_text()))


def all_rule_exprs():
    """(where, expr) for every alert, recording rule and panel query."""
    for group, rule in alert_rules():
        yield f"{rel(ALERTS)} {rule['alert']}", rule["expr"]
    for record, expr in recording_rules().items():
        yield f"{rel(RECORDING)} {record}", expr
    for path, board in dashboards():
        for panel in data_panels(board):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield f"{rel(path)} panel {panel.get('title')!r}", target["expr"]


def bucket_in(value, bounds):
    return any(math.isclose(value, b, rel_tol=1e-9) for b in bounds)


# ------------------------------------------------------------------------------------------------------ checks

def check_rules():
    p = Problems()
    doc = load_yaml(ALERTS)
    names = [g["name"] for g in doc["groups"]]
    p.check(names == ALERT_GROUPS, rel(ALERTS), f"groups are {names}, want {ALERT_GROUPS}")
    seen = set()
    for group, rule in alert_rules():
        name = rule.get("alert")
        where = f"{rel(ALERTS)} group {group}"
        if not p.check(name, where, f"a recording rule belongs in {rel(RECORDING)}: {rule.get('record')}"):
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
    for group in load_yaml(RECORDING)["groups"]:
        for rule in group["rules"]:
            record = rule.get("record")
            if p.check(record, f"{rel(RECORDING)} group {group['name']}", "only recording rules belong here"):
                p.check(re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", record),
                        f"{rel(RECORDING)} {record}", "recording rule names are level:metric:operations")

    # Aggregations keep `namespace`: one Prometheus watches every namespace, and summing staging into production
    # hides an outage (a worker down in one namespace while another is up would not fire ScoreWorkerDown).
    for where, expr in [(f"{rel(ALERTS)} {r['alert']}", r["expr"]) for _, r in alert_rules()] + \
            [(f"{rel(RECORDING)} {r['record']}", r["expr"]) for g in load_yaml(RECORDING)["groups"] for r in g["rules"]]:
        for op, clause, labels in aggregations(expr):
            if clause == "without":
                p.check("namespace" not in labels, where, f"{op} without (...) drops namespace")
            else:
                p.check("namespace" in labels, where,
                        f"{op} {'by (' + ', '.join(labels) + ')' if clause else '(...)'} drops namespace: keep it in by (...)")

    # Every recording rule is used by an alert or a dashboard panel.
    users = " ".join([rule["expr"] for _, rule in alert_rules()] +
                     [t.get("expr", "") for _, board in dashboards() for pn in data_panels(board)
                      for t in pn.get("targets", [])])
    for record in recording_rules():
        p.check(record in metric_names(users) or re.search(re.escape(record) + r"\b", users),
                f"{rel(RECORDING)} {record}", "used by no alert and no dashboard panel")

    # Every alert: at least one test where it fires and one where it must not.
    firing, quiet = set(), set()
    group_names = [g["name"] for f in (RECORDING, ALERTS) for g in load_yaml(f)["groups"]]
    test_files = sorted(RULE_TESTS.glob("*_test.yml"))
    p.check(test_files, rel(RULE_TESTS), "no *_test.yml files")
    for path in test_files:
        doc = load_yaml(path)
        files = {(path.parent / f).resolve() for f in doc.get("rule_files", [])}
        p.check({RECORDING.resolve(), ALERTS.resolve()} <= files, rel(path), "rule_files must load recording.yml and alerts.yml")
        order = doc.get("group_eval_order")
        p.check(order == group_names, rel(path),
                "group_eval_order must list the recording groups first, then the alert groups, as in the files")
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                p.check(name in seen, rel(path), f"test for unknown alert {name}")
                (firing if case.get("exp_alerts") else quiet).add(name)
    for name in sorted(seen):
        p.check(name in firing, rel(RULE_TESTS), f"{name} has no test case in which it fires")
        p.check(name in quiet, rel(RULE_TESTS), f"{name} has no test case in which it must not fire")
    return p.done(f"{len(seen)} alerts in {len(names)} groups, each with a firing and a not-firing test; "
                  "every aggregation keeps namespace")


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def kebab(name):
    """NatsJetStreamStorageNearLimit -> nats-jetstream-storage-near-limit (product names stay one word)."""
    name = name.replace("JetStream", "Jetstream")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def check_runbooks():
    p = Problems()
    referenced = set()
    count = 0
    base = sync_generated.runbook_base()
    p.check(re.match(r"https?://[^/\s]+/", base + "/"), rel(sync_generated.RUNBOOK_BASE),
            f"runbook base {base!r} is not an absolute http(s) URL")
    # The PrometheusRule carries the same links as the rule files (it is generated from them).
    generated = {r["alert"]: r.get("annotations", {}).get("runbook_url")
                 for g in load_yaml(K8S / "prometheusrule.yaml")["spec"]["groups"] for r in g["rules"] if "alert" in r}
    for group, rule in alert_rules():
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        where = f"{name} runbook_url {url!r}"
        p.check(generated.get(name) == url, where,
                f"{rel(K8S / 'prometheusrule.yaml')} has {generated.get(name)!r} (run deploy/tools/sync_generated.py)")
        m = re.fullmatch(re.escape(base) + r"/([a-z0-9-]+\.md)#([a-z0-9_-]+)", url)
        if not p.check(m, where, f"must be {base}/<page>.md#<heading> (run deploy/tools/sync_generated.py)"):
            continue
        page, anchor = m.groups()
        p.check(page == f"{kebab(name)}.md", where, f"one page per alert: expected {kebab(name)}.md")
        path = RUNBOOKS / page
        if not p.check(path.is_file(), where, f"{rel(RUNBOOKS)}/{page} does not exist"):
            continue
        referenced.add(page)
        text = path.read_text()
        headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
        p.check(anchor in {slug(h) for h in headings}, where, f"no heading with anchor #{anchor} in {page}")
        p.check(headings and headings[0] == name, rel(path), f"the page's title must be the alert name {name}")
        sections = re.findall(r"^## (.+)$", text, re.M)
        for section in RUNBOOK_SECTIONS:
            p.check(section in sections, rel(path), f"missing section '## {section}'")
        for section in RUNBOOK_SECTIONS:
            body = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
            if body:
                p.check(len(body.group(1).split()) >= 8, rel(path), f"section '{section}' is nearly empty")
        count += 1
    for path in sorted(RUNBOOKS.glob("*.md")):
        if path.name != "README.md":
            p.check(path.name in referenced, rel(path), "no alert links to this runbook")
    # Links between pages and into the repository resolve too.
    for path in sorted(RUNBOOKS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if p.check(dest.exists(), rel(path), f"link {target} points to a missing file"):
                if anchor and dest.suffix == ".md":
                    anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", dest.read_text(), re.M)}
                    p.check(anchor in anchors, rel(path), f"link {target}: no heading #{anchor}")
    index = RUNBOOKS / "README.md"
    if p.check(index.is_file(), rel(RUNBOOKS), "README.md (the index) is missing"):
        links = set(re.findall(r"\]\(([a-z0-9-]+\.md)[^)]*\)", index.read_text()))
        for page in sorted(referenced - links):
            p.add(rel(index), f"does not link {page}")
        for page in sorted(links):
            p.check((RUNBOOKS / page).is_file(), rel(index), f"links a missing page {page}")
    return p.done(f"{count} runbook_urls under {base}, the same in prometheusrule.yaml, resolve to a page and "
                  f"heading with all {len(RUNBOOK_SECTIONS)} sections")


def check_contract():
    p = Problems()
    documented = documented_names()
    records = recording_rules()
    used = set()
    for where, expr in all_rule_exprs():
        for name in metric_names(expr):
            if ":" in name:
                p.check(name in records, where, f"recording rule {name} is not defined in {rel(RECORDING)}")
                continue
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            p.check(name in documented or base in documented, where, f"{name} is not documented in {rel(METRICS_DOC)}")
    buckets = documented_buckets()
    p.check(buckets, rel(METRICS_DOC), "no bucket tables found")
    # Alert thresholds on histogram quantiles must be bucket boundaries.
    checked = 0
    for group, rule in alert_rules():
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
    # So must every dashboard threshold on such a quantile.
    for path, board in dashboards():
        for panel in data_panels(board):
            steps = [s["value"] for s in panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
                     if s.get("value") is not None]
            for target in panel.get("targets", []):
                for name in metric_names(target.get("expr", "")):
                    for hist in quantile_histograms(records.get(name, "")) & set(buckets):
                        for value in steps:
                            checked += 1
                            p.check(bucket_in(value, buckets[hist]), f"{rel(path)} panel {panel['title']!r}",
                                    f"threshold {value:g} on {hist} is not a bucket boundary")
    return p.done(f"{len(used)} metric names documented; {checked} histogram thresholds on bucket boundaries")


def _steps(panel):
    return panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])


def check_dashboards():
    p = Problems()
    records = recording_rules()
    alerts = {rule["alert"]: rule for _, rule in alert_rules()}
    mirrored = {}  # recording rule -> (alert, threshold)
    for name, rule in alerts.items():
        found = alert_threshold(rule["expr"])
        if found and found[1] in (">", ">="):
            mirrored.setdefault(found[0], []).append((name, found[2]))
    uids, count = set(), 0
    boards = list(dashboards())
    p.check(len(boards) >= 2, rel(DASHBOARDS), "expected the gateway and worker dashboards")
    for path, board in boards:
        where = rel(path)
        p.check(board.get("uid") and board["uid"] not in uids, where, "missing or duplicate uid")
        uids.add(board.get("uid"))
        p.check(board.get("title"), where, "no title")
        p.check(board.get("refresh") == "30s", where, f"refresh is {board.get('refresh')!r}, want '30s'")
        variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
        ds = variables.get("datasource", {})
        p.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus", where,
                "needs a `datasource` variable of type datasource (prometheus)")
        p.check(variables.get("job", {}).get("type") == "query", where, "needs a `job` query variable")
        for var in set(variables) - {"datasource"}:
            p.check(var in DASHBOARD_VARS, where, f"variable {var!r} has no stand-in value for the PromQL check")
        ids = set()
        for panel in data_panels(board):
            count += 1
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
            steps = _steps(panel)
            for target in targets:
                for name in metric_names(target.get("expr", "")):
                    for alert, value in mirrored.get(name, []):
                        ok = any(s.get("color") == "red" and s.get("value") is not None and
                                 math.isclose(s["value"], value) for s in steps)
                        p.check(ok, pw, f"needs a red threshold at {value:g}, the threshold of {alert}")
            for name in re.findall(ALERT_NAME, panel.get("description", "")):
                p.check(name in alerts, pw, f"description names an unknown alert {name}")
    # The gateway's routing latency panel: yellow at 20 ms, red at 50 ms (the wording).
    for path, board in boards:
        for panel in data_panels(board):
            if any("job:gateway_routing_duration_seconds:p99_rate5m" in t.get("expr", "") for t in panel.get("targets", [])):
                got = {(s.get("color"), s.get("value")) for s in _steps(panel)}
                p.check({("yellow", 0.02), ("red", 0.05)} <= got, f"{rel(path)} panel {panel['title']!r}",
                        f"routing p99 thresholds must be yellow 0.02 and red 0.05, got {sorted(got, key=str)}")
    return p.done(f"{count} panels in {len(boards)} dashboards: title, unit, datasource variable, thresholds = alerts")


def write_dashboard_rules(out):
    """Every panel query as a recording rule (`promtool check rules` then parses each as PromQL)."""
    rules = []
    for path, board in dashboards():
        uid = re.sub(r"\W", "_", board.get("uid", path.stem))
        for panel in data_panels(board):
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for var, value in DASHBOARD_VARS.items():
                    expr = expr.replace("${%s}" % var, value).replace("$" + var, value)
                rules.append({"record": f"dashboard:{uid}_panel{panel.get('id')}:{target.get('refId', 'A').lower()}",
                              "expr": expr})
    pathlib.Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    print(f"{len(rules)} panel queries written to {out}")
    return 0


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


def _k8s_docs(k8s=K8S):
    docs = []
    for path in sorted(pathlib.Path(k8s).glob("*.yaml")):
        for doc in load_yaml_all(path):
            docs.append((path, doc))
    return docs


def _flatten(table, prefix=()):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items()) and selector


def _env_key_exists(name, defaults):
    parts = tuple(x.lower() for x in name[len("SCORE_WORKER__"):].split("__"))
    return parts in defaults


def check_kubernetes(k8s=K8S):
    k8s = pathlib.Path(k8s)
    p = Problems()
    docs = _k8s_docs(k8s)
    by_kind = {}
    for path, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append((path, doc))
    defaults = dict(_flatten(tomllib.loads(DEFAULT_CONFIG.read_text())))

    # kustomization: every listed file exists; every manifest but the migration Job is listed.
    kust = k8s / "kustomization.yaml"
    listed = set(load_yaml(kust).get("resources", []))
    for name in sorted(listed):
        p.check((k8s / name).is_file(), rel(kust), f"lists a missing file {name}")
    for path in sorted(k8s.glob("*.yaml")):
        if path.name not in {"kustomization.yaml", "migrate-job.yaml"}:
            p.check(path.name in listed, rel(kust), f"does not list {path.name}")

    # ConfigMap: TOML whose every key exists in config/default.toml with the same type; no credentials.
    config = {}
    for path, cm in by_kind.get("ConfigMap", []):
        text = cm.get("data", {}).get("config.toml")
        if not p.check(text, rel(path), "no data.config.toml"):
            continue
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            p.add(rel(path), f"config.toml does not parse: {err}")
            continue
        for key, value in _flatten(config):
            dotted = ".".join(key)
            if p.check(key in defaults, rel(path), f"config.toml key {dotted} is not in {rel(DEFAULT_CONFIG)}"):
                p.check(type(value) is type(defaults[key]), rel(path),
                        f"{dotted} is a {type(value).__name__}, {rel(DEFAULT_CONFIG)} has a {type(defaults[key]).__name__}")
            if key[-1] in {"password", "token", "nkey_seed"}:
                p.check(value == "", rel(path), f"{dotted}: credentials belong in a Secret")
    effective = dict(defaults)
    effective.update(dict(_flatten(config)))

    deployments = by_kind.get("Deployment", [])
    p.check(len(deployments) == 1, rel(k8s), "expected one Deployment")
    if not deployments:
        return p.done("")
    path, dep = deployments[0]
    where = f"{rel(path)} {dep['metadata']['name']}"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    p.check(_matches(spec.get("selector"), pod_labels), where, "selector does not match the pod labels")
    p.check(spec.get("replicas", 1) >= 2, where, "replicas must be at least 2")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    p.check(spec.get("strategy", {}).get("type") == "RollingUpdate" and str(ru.get("maxUnavailable")) == "0"
            and str(ru.get("maxSurge", "0")) not in {"0", "0%"}, where,
            "rolling update must never go below the desired count (maxUnavailable 0, maxSurge > 0)")
    psc = pod.get("securityContext", {})
    p.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where,
            "pod must run as a non-root user (runAsNonRoot, runAsUser != 0)")
    p.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile must be RuntimeDefault")
    zones = [c for c in pod.get("topologySpreadConstraints", []) if c.get("topologyKey") == "topology.kubernetes.io/zone"]
    p.check(zones and all(_matches(c.get("labelSelector"), pod_labels) for c in zones), where,
            "needs a topologySpreadConstraint over topology.kubernetes.io/zone selecting its own pods")
    shutdown = duration_seconds(effective.get(("shutdown", "timeout"), "20s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    p.check(grace >= shutdown + 10, where,
            f"terminationGracePeriodSeconds {grace} must exceed shutdown.timeout {shutdown:g}s by at least 10s")
    p.check(pod.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken should be false")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets_used = set()
    for c in pod.get("containers", []):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        p.check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        p.check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
        p.check("ALL" in sc.get("capabilities", {}).get("drop", []), cw, "capabilities must drop ALL")
        res = c.get("resources", {})
        p.check({"cpu", "memory"} <= set(res.get("requests", {})), cw, "needs cpu and memory requests")
        p.check("memory" in res.get("limits", {}), cw, "needs a memory limit")
        ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports", [])}
        p.check(ports.get("metrics") == 9102, cw, "needs the container port `metrics` 9102")
        for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            if probe != "startupProbe" or c.get(probe):
                p.check(get.get("path") == want, cw, f"{probe} must GET {want}, has {get.get('path')!r}")
                p.check(get.get("port") in ports or get.get("port") in ports.values(), cw, f"{probe} port is not a container port")
        args = c.get("args", []) + c.get("command", [])
        p.check(args and args[-1] == "run", cw, "must run the `run` subcommand")
        if "--config" in args:
            cfg = args[args.index("--config") + 1]
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            mount = mounts.get(str(pathlib.PurePosixPath(cfg).parent))
            ok = mount and volumes.get(mount["name"], {}).get("configMap")
            p.check(ok, cw, f"--config {cfg} is not in a mounted ConfigMap")
        if sc.get("readOnlyRootFilesystem"):
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            p.check("/tmp" in mounted, cw, "a read-only root filesystem needs a writable /tmp volume")
        env = {e["name"]: e for e in c.get("env", [])}
        for name, e in env.items():
            if name.startswith("SCORE_WORKER__"):
                p.check(_env_key_exists(name, defaults), cw, f"{name} names no key of {rel(DEFAULT_CONFIG)}")
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secrets_used.add(ref["name"])
        for name in ("SCORE_WORKER__NATS__AUTH__PASSWORD", "SCORE_WORKER__SCYLLA__PASSWORD"):
            p.check(env.get(name, {}).get("valueFrom", {}).get("secretKeyRef"), cw, f"{name} must come from a Secret")
        p.check(env.get("SCORE_WORKER__LOG__FORMAT", {}).get("value") == "json", cw, "SCORE_WORKER__LOG__FORMAT should be json")
    p.check(not by_kind.get("Secret"), rel(k8s), "no Secret manifests in the repository: reference them")
    p.check(len(secrets_used) >= 2, where, "expects Secret references for NATS and the database")

    for path, pdb in by_kind.get("PodDisruptionBudget", []):
        pw = rel(path)
        p.check(_matches(pdb["spec"].get("selector"), pod_labels), pw, "selector does not match the worker pods")
        p.check("maxUnavailable" in pdb["spec"] or pdb["spec"].get("minAvailable", 0) < spec.get("replicas", 1), pw,
                "must allow one disruption")
        # Otherwise pods that are running but not ready (every pod during a NATS or database outage) count as
        # disrupted already, and a node drain waits for an outage that is not the node's to end.
        p.check(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", pw,
                "unhealthyPodEvictionPolicy must be AlwaysAllow (a dependency outage must not block node drains)")
    p.check(by_kind.get("PodDisruptionBudget"), rel(k8s), "no PodDisruptionBudget")

    containers = pod.get("containers", [])
    metrics_ports = {pt.get("name") for c in containers for pt in c.get("ports", [])}
    for path, so in by_kind.get("ScaledObject", []):
        sw = rel(path)
        s = so["spec"]
        p.check(s.get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"], sw, "scaleTargetRef is not the Deployment")
        lo, hi = s.get("minReplicaCount", 0), s.get("maxReplicaCount", 100)
        p.check(lo >= 2, sw, "minReplicaCount must keep at least 2 replicas")
        p.check(hi >= lo, sw, "maxReplicaCount below minReplicaCount")
        triggers = [t for t in s.get("triggers", []) if t.get("type") == "nats-jetstream"]
        if p.check(triggers, sw, "no nats-jetstream trigger"):
            md = triggers[0].get("metadata", {})
            p.check(set(md) <= KEDA_NATS_KEYS, sw, f"unknown nats-jetstream metadata {sorted(set(md) - KEDA_NATS_KEYS)}")
            p.check(KEDA_NATS_REQUIRED <= set(md), sw, f"missing nats-jetstream metadata {sorted(KEDA_NATS_REQUIRED - set(md))}")
            p.check(all(isinstance(v, str) for v in md.values()), sw, "trigger metadata values must be strings")
            p.check("://" not in md.get("natsServerMonitoringEndpoint", ""), sw, "natsServerMonitoringEndpoint takes host:port, no scheme")
            p.check(md.get("stream") == effective[("nats", "stream")], sw, "stream differs from nats.stream")
            p.check(md.get("consumer") == effective[("nats", "consumer")], sw, "consumer differs from nats.consumer")
            try:
                p.check(int(md.get("lagThreshold", "10")) > 0, sw, "lagThreshold must be a positive integer")
            except ValueError:
                p.add(sw, "lagThreshold must be an integer string")
        per_pod = (effective[("batch", "max_inflight")] * effective[("batch", "max_scores")]
                   + effective[("nats", "pull_batch")])
        p.check(hi * per_pod <= effective[("nats", "max_ack_pending")], sw,
                f"maxReplicaCount {hi} x {per_pod} in-flight messages per pod exceeds nats.max_ack_pending "
                f"{effective[('nats', 'max_ack_pending')]}: extra replicas would idle")
        # Fallback: when KEDA cannot read the lag (NATS monitoring unreachable) it sets a known replica count
        # instead of leaving the last one, however low. KEDA only applies it to AverageValue triggers.
        fb = s.get("fallback")
        if p.check(fb, sw, "needs a fallback (replicas while the lag cannot be read)"):
            p.check(isinstance(fb.get("failureThreshold"), int) and fb["failureThreshold"] >= 1, sw,
                    "fallback.failureThreshold must be a positive integer")
            p.check(isinstance(fb.get("replicas"), int) and lo <= fb["replicas"] <= hi, sw,
                    f"fallback.replicas must lie within minReplicaCount {lo} and maxReplicaCount {hi}")
            p.check(all(t.get("metricType", "AverageValue") == "AverageValue" for t in s.get("triggers", [])), sw,
                    "KEDA applies a fallback only to AverageValue triggers")
    p.check(by_kind.get("ScaledObject"), rel(k8s), "no KEDA ScaledObject")
    p.check(not by_kind.get("HorizontalPodAutoscaler"), rel(k8s), "KEDA owns the HPA: no second one")

    for path, pm in by_kind.get("PodMonitor", []):
        mw = rel(path)
        s = pm["spec"]
        p.check(_matches(s.get("selector"), pod_labels), mw, "selector does not match the worker pods")
        job_label = s.get("jobLabel")
        p.check(job_label and pod_labels.get(job_label) == WORKER_JOB, mw,
                f"jobLabel must make job=\"{WORKER_JOB}\" (the rules select on it)")
        for ep in s.get("podMetricsEndpoints", []):
            p.check(ep.get("port") in metrics_ports, mw, f"port {ep.get('port')!r} is not a container port name")
            p.check(ep.get("path", "/metrics") == "/metrics", mw, "path must be /metrics")
    p.check(by_kind.get("PodMonitor"), rel(k8s), "no PodMonitor")
    p.check(by_kind.get("PrometheusRule"), rel(k8s), "no PrometheusRule")

    for path, job in by_kind.get("Job", []):
        jw = rel(path)
        c = job["spec"]["template"]["spec"]["containers"][0]
        p.check((c.get("args", []) or [""])[-1] == "migrate", jw, "the migration Job must run `migrate`")
        p.check(c.get("image") == containers[0].get("image"), jw, "the migration Job must use the worker's image")
    check_network_policy(p, by_kind, pod_labels, containers, effective, k8s)
    check_credentials(p, by_kind, dep, effective, k8s)
    check_labels(p, docs, by_kind, k8s)
    return p.done(f"{len(docs)} manifests consistent (Deployment, ConfigMap, PDB, NetworkPolicy, ScaledObject, "
                  "PodMonitor, Job, TLS and database roles, recommended labels)")


def _service_namespace(host):
    """`svc.ns.svc.cluster.local` -> `ns` (None for anything that is not a cluster Service name)."""
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else None


def _endpoints(urls, default_port):
    out = []
    for url in urls:
        hostport = re.sub(r"^[a-z]+://", "", url.strip()).split("/")[0].split("@")[-1]
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", str(default_port))
        out.append((host, int(port)))
    return out


def _peer_namespaces(peer):
    ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
    return ns


def _wanted_endpoints(effective, names):
    """{name: (ports, namespaces)} of NATS and/or the database, from the configuration."""
    ends = {"NATS": _endpoints(effective[("nats", "url")].split(","), 4222),
            "database": _endpoints(effective[("scylla", "nodes")], 9042)}
    return {name: ({port for _, port in ends[name]}, {_service_namespace(h) for h, _ in ends[name]})
            for name in names}


def _check_egress(p, w, egress, wanted, allowed_extra):
    """Every egress rule goes to one of `wanted` (ports, namespaces) or to DNS; together they cover them."""
    dns_ok = {"UDP": False, "TCP": False}
    covered = {name: set() for name in wanted}
    for i, rule in enumerate(egress):
        ports = rule.get("ports") or []
        peers = rule.get("to") or []
        if not p.check(ports and peers, w, f"egress rule {i} must name both destinations and ports"):
            continue
        namespaces = {_peer_namespaces(peer) for peer in peers}
        numbers = {pt.get("port") for pt in ports}
        if numbers == {53}:
            p.check(namespaces == {"kube-system"} and all(
                    (peer.get("podSelector") or {}).get("matchLabels", {}).get("k8s-app") == "kube-dns" for peer in peers),
                    w, f"egress rule {i}: port 53 only to kube-dns in kube-system")
            for pt in ports:
                dns_ok[pt.get("protocol", "TCP")] = True
            continue
        matched = [name for name, (wports, wns) in wanted.items()
                   if namespaces <= wns and numbers <= wports | allowed_extra.get(name, set())]
        if p.check(matched, w, f"egress rule {i} ({sorted(namespaces, key=str)} ports {sorted(numbers, key=str)}) "
                               f"goes to none of {' or '.join(sorted(wanted))} or DNS"):
            for pt in ports:
                p.check(pt.get("protocol", "TCP") == "TCP", w, f"egress rule {i}: NATS and CQL are TCP")
            covered[matched[0]] |= numbers
    for name, (wports, wns) in wanted.items():
        p.check(None not in wns, w, f"{name} address is not a cluster Service name: write its egress rule by hand")
        p.check(wports <= covered[name], w,
                f"no egress to {name} ports {sorted(wports - covered[name])} in namespace {sorted(wns, key=str)} "
                "(configmap.yaml)")
    p.check(all(dns_ok.values()), w, "egress to DNS needs port 53 over UDP and TCP")


def check_network_policy(p, by_kind, pod_labels, containers, effective, k8s=K8S):
    """Ingress only to the metrics port; egress only to NATS, the database and DNS (from configmap.yaml)."""
    policies = [(path, np) for path, np in by_kind.get("NetworkPolicy", [])
                if _matches(np["spec"].get("podSelector"), pod_labels)]
    if not p.check(len(policies) == 1, rel(k8s), f"expected one NetworkPolicy selecting the worker pods, found {len(policies)}"):
        return
    path, np = policies[0]
    w = rel(path)
    s = np["spec"]
    p.check(sorted(s.get("policyTypes", [])) == ["Egress", "Ingress"], w,
            "policyTypes must be Ingress and Egress (otherwise one direction stays open)")
    metrics = {pt.get("containerPort") for c in containers for pt in c.get("ports", []) if pt.get("name") == "metrics"}
    ingress = s.get("ingress", [])
    p.check(ingress, w, "no ingress rule: Prometheus could not scrape /metrics")
    for i, rule in enumerate(ingress):
        ports = rule.get("ports") or []
        p.check(ports and all(pt.get("port") in {"metrics"} | metrics and pt.get("protocol", "TCP") == "TCP"
                              for pt in ports), w, f"ingress rule {i} must allow only the metrics port (TCP {sorted(metrics)})")
        p.check(rule.get("from"), w, f"ingress rule {i} allows every source: name Prometheus' namespace")
    wanted = _wanted_endpoints(effective, ["NATS", "database"])
    # ScyllaDB's shard-aware port (CQL port + 10000) is where the driver opens its per-shard connections.
    extra = {"database": {port + 10000 for port in wanted["database"][0]}}
    _check_egress(p, w, s.get("egress", []), wanted, extra)


def _mounted_file(container, volumes, path):
    """The volume (and whether the file is among its items) that holds `path` in `container`, or None."""
    path = pathlib.PurePosixPath(path)
    for m in container.get("volumeMounts", []):
        if path.parent == pathlib.PurePosixPath(m["mountPath"]):
            volume = volumes.get(m["name"], {})
            items = (volume.get("secret") or volume.get("configMap") or {}).get("items")
            return volume, items is None or path.name in {i.get("path") for i in items}
    return None


def _secret_env(container, name):
    ref = next((e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", []) if e["name"] == name), None)
    return ref["name"] if ref else None


def check_credentials(p, by_kind, dep, effective, k8s=K8S):
    """TLS on to NATS and the database, its CA files from mounted Secrets; the worker and the migration Job log in
    to the database as different roles (different Secrets); the Job inside a NetworkPolicy of its own."""
    where = f"{rel(k8s / 'configmap.yaml')} config.toml"
    urls = [u.strip() for u in effective[("nats", "url")].split(",")]
    p.check(effective[("nats", "tls", "enabled")] is True or all(u.startswith("tls://") for u in urls), where,
            "NATS without TLS: set nats.tls.enabled = true (credentials and scores would cross the network in clear)")
    p.check(effective[("scylla", "tls", "enabled")] is True, where,
            "the database without TLS: set scylla.tls.enabled = true")
    pod = dep["spec"]["template"]["spec"]
    jobs = by_kind.get("Job", [])
    users = [("worker", f"{rel(k8s / 'deployment.yaml')} {dep['metadata']['name']}", pod, {"nats", "scylla"})]
    users += [("migration Job", rel(path), job["spec"]["template"]["spec"], {"scylla"}) for path, job in jobs]
    for who, w, spec, sections in users:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            for section in sorted(sections):
                for key in ("ca_file", "cert_file", "key_file"):
                    path = effective.get((section, "tls", key), "")
                    if not path:
                        continue
                    found = _mounted_file(c, volumes, path)
                    if p.check(found, w, f"{who}: {section}.tls.{key} {path} is in no mounted volume"):
                        volume, listed = found
                        p.check(volume.get("secret", {}).get("secretName"), w,
                                f"{who}: {section}.tls.{key} {path} must come from a Secret")
                        p.check(listed, w, f"{who}: {section}.tls.{key}: the volume's items do not include {path}")
    worker_c = pod.get("containers", [{}])[0]
    worker_db = {_secret_env(worker_c, n) for n in ("SCORE_WORKER__SCYLLA__USER", "SCORE_WORKER__SCYLLA__PASSWORD")}
    for path, job in jobs:
        jw = rel(path)
        c = job["spec"]["template"]["spec"]["containers"][0]
        job_db = {_secret_env(c, n) for n in ("SCORE_WORKER__SCYLLA__USER", "SCORE_WORKER__SCYLLA__PASSWORD")}
        p.check(None not in job_db, jw, "the migration Job's database user and password must come from a Secret")
        shared = sorted((job_db & worker_db) - {None})
        p.check(not shared, jw, f"the migration Job and the worker share the database Secret {shared}: the worker's "
                                "role must not be able to change the schema (two roles: deploy/README.md)")
        labels = job["spec"]["template"]["metadata"].get("labels", {})
        policies = [(pp, np) for pp, np in by_kind.get("NetworkPolicy", [])
                    if _matches(np["spec"].get("podSelector"), labels)]
        if not p.check(len(policies) == 1, jw,
                       f"expected one NetworkPolicy selecting the migration Job's pods, found {len(policies)}"):
            continue
        pp, np = policies[0]
        w = rel(pp)
        s = np["spec"]
        p.check(sorted(s.get("policyTypes", [])) == ["Egress", "Ingress"], w,
                "the Job's policyTypes must be Ingress and Egress (otherwise one direction stays open)")
        p.check(not s.get("ingress"), w, "the migration Job serves nothing: no ingress rule")
        wanted = _wanted_endpoints(effective, ["database"])
        _check_egress(p, w, s.get("egress", []), wanted,
                      {"database": {port + 10000 for port in wanted["database"][0]}})


def _edit(text, old, new):
    """`text` with `old` replaced by `new` once: as a substring, or else as a run of whole lines compared without
    their indentation (YAML block scalars drop it), `new` indented like the first line it replaces. None if absent."""
    if old in text:
        return text.replace(old, new, 1)
    lines, olds = text.split("\n"), [line.strip() for line in old.split("\n")]
    for i in range(len(lines) - len(olds) + 1):
        if [line.strip() for line in lines[i:i + len(olds)]] == olds:
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            news = [indent + line if line else line for line in new.split("\n")] if new else []
            return "\n".join(lines[:i] + news + lines[i + len(olds):])
    return None


def check_kubernetes_fixtures():
    """Each fixture (a broken copy of deploy/kubernetes) fails `kubernetes` with its expected problem."""
    import contextlib
    import io
    import shutil
    import tempfile

    def run(k8s):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = check_kubernetes(k8s)
        return rc, out.getvalue()

    fixtures = load_yaml(K8S_FIXTURES)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        rc, out = run(K8S)
        if rc != 0:
            failed.append(f"the real manifests do not pass:\n{out}")
        for fx in fixtures:
            k8s = pathlib.Path(tmp) / fx["name"]
            shutil.copytree(K8S, k8s)
            for edit in fx["edits"]:
                target = k8s / edit["file"]
                text = _edit(target.read_text(), edit["old"], edit["new"])
                if text is None:
                    failed.append(f"{fx['name']}: `{edit['old']}` is not in {edit['file']} (fixture out of date)")
                    break
                target.write_text(text)
            else:
                rc, out = run(k8s)
                hits = [line.strip() for line in out.splitlines() if fx["expect"] in line]
                if rc == 0 or not hits:
                    failed.append(f"{fx['name']}: expected a problem with `{fx['expect']}`, got:\n{out}")
                else:
                    print(f"  {fx['name']}: {hits[0]}")
    for f in failed:
        print(f"  FAIL {f}")
    print(f"{len(fixtures)} broken fixtures each fail with their problem; the real manifests pass"
          if not failed else f"{len(failed)} fixture problem(s)")
    return 1 if failed else 0


RECOMMENDED_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of"]
# Labels that change with every release or tool: never in a selector (a Deployment's selector is immutable).
UNSTABLE_LABELS = {"app.kubernetes.io/version", "app.kubernetes.io/managed-by"}
# The Deployment's selector as released: changing it makes `kubectl apply` fail on every existing cluster.
WORKER_SELECTOR = {"app.kubernetes.io/name": "score-worker"}


def _selectors(doc):
    spec = doc.get("spec", {})
    kind = doc.get("kind")
    if kind in {"Deployment", "PodDisruptionBudget", "PodMonitor"}:
        yield "selector", spec.get("selector")
    if kind == "NetworkPolicy":
        yield "podSelector", spec.get("podSelector")
    for c in spec.get("template", {}).get("spec", {}).get("topologySpreadConstraints", []):
        yield "topologySpreadConstraints.labelSelector", c.get("labelSelector")


def check_labels(p, docs, by_kind, k8s=K8S):
    """The recommended app.kubernetes.io labels on every object and pod template; selectors use stable ones."""
    version = sync_generated.package_version()
    instances = set()
    for path, doc in docs:
        if doc.get("kind") == "Kustomization":
            continue
        w = f"{rel(path)} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        labels = doc.get("metadata", {}).get("labels", {})
        places = [("metadata.labels", labels)]
        template = doc.get("spec", {}).get("template")
        if template is not None:
            places.append(("pod template", template.get("metadata", {}).get("labels", {})))
        for where, have in places:
            for key in RECOMMENDED_LABELS:
                p.check(str(have.get(key, "")).strip(), w, f"{where}: no {key}")
            p.check(str(have.get("app.kubernetes.io/version")) == version, w,
                    f"{where}: app.kubernetes.io/version {have.get('app.kubernetes.io/version')!r} is not Cargo.toml's "
                    f"{version!r} (run deploy/tools/sync_generated.py)")
            p.check(have.get("app.kubernetes.io/part-of") == "score-pipeline", w, f"{where}: part-of must be score-pipeline")
            instances.add(have.get("app.kubernetes.io/instance"))
            if where == "pod template":
                for key in RECOMMENDED_LABELS:
                    p.check(have.get(key) == labels.get(key), w, f"pod template {key} differs from the object's")
        for where, selector in _selectors(doc):
            keys = set((selector or {}).get("matchLabels", {})) | {e.get("key") for e in (selector or {}).get("matchExpressions", [])}
            p.check(not keys & UNSTABLE_LABELS, w, f"{where} uses {sorted(keys & UNSTABLE_LABELS)}, which change")
    p.check(len(instances) == 1, rel(k8s), f"one app.kubernetes.io/instance for the whole installation, found {sorted(instances, key=str)}")
    for path, dep in by_kind.get("Deployment", []):
        p.check(dep["spec"].get("selector", {}).get("matchLabels") == WORKER_SELECTOR and
                not dep["spec"]["selector"].get("matchExpressions"), rel(path),
                f"the Deployment's selector must stay {WORKER_SELECTOR}: it is immutable on existing clusters")
    kust = load_yaml(pathlib.Path(k8s) / "kustomization.yaml")
    managed = [lab for lab in kust.get("labels", []) if "app.kubernetes.io/managed-by" in lab.get("pairs", {})]
    p.check(managed and managed[0].get("includeTemplates") is True and not managed[0].get("includeSelectors"),
            rel(pathlib.Path(k8s) / "kustomization.yaml"),
            "labels: app.kubernetes.io/managed-by with includeTemplates: true and no includeSelectors (selectors stay as released)")


CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule", "ServiceMonitor", "TriggerAuthentication"}


def builtin_manifests():
    """The manifests of built-in kinds (for kubernetes-validate, which only warns on kinds it has no schema for)."""
    files = sorted({rel(path) for path, doc in _k8s_docs()
                    if doc.get("kind") not in CUSTOM_KINDS and doc.get("kind") != "Kustomization"})
    print("\n".join(files))
    return 0


def crs_json():
    items = [{"file": rel(path), "doc": doc} for path, doc in _k8s_docs()
             if doc.get("kind") in CUSTOM_KINDS]
    print(json.dumps(items))
    return 0


def check_compose():
    p = Problems()
    doc = load_yaml(COMPOSE)
    base = COMPOSE.parent
    where = rel(COMPOSE)
    services = doc.get("services", {})
    mounts = {}  # service -> {container path: host path}
    for name, svc in services.items():
        sw = f"{where} service {name}"
        build = svc.get("build")
        if build:
            ctx = (base / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            p.check(ctx.is_dir(), sw, f"build context {ctx} does not exist")
            if isinstance(build, dict) and build.get("dockerfile"):
                p.check((ctx / build["dockerfile"]).is_file(), sw, f"dockerfile {build['dockerfile']} does not exist")
        for vol in svc.get("volumes", []):
            src, _, rest = vol.partition(":")
            target = rest.split(":")[0]
            if src.startswith((".", "/")):
                host = (base / src).resolve()
                p.check(host.exists(), sw, f"bind mount source {src} does not exist")
                mounts.setdefault(name, {})[target] = host
            else:
                p.check(src in (doc.get("volumes") or {}), sw, f"named volume {src} is not declared")
        for dep in (svc.get("depends_on") or {}):
            p.check(dep in services, sw, f"depends on unknown service {dep}")
        for key in (svc.get("environment") or {}):
            if key.startswith("SCORE_WORKER__"):
                p.check(_env_key_exists(key, dict(_flatten(tomllib.loads(DEFAULT_CONFIG.read_text())))), sw,
                        f"{key} names no key of {rel(DEFAULT_CONFIG)}")

    def host_path(service, container_path):
        for target, host in sorted(mounts.get(service, {}).items(), key=lambda kv: -len(kv[0])):
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return host / pathlib.PurePosixPath(container_path).relative_to(target)
        return None

    def command(svc):
        cmd = svc.get("command", [])
        return cmd.split() if isinstance(cmd, str) else cmd

    scylla = services.get("scylla", {})
    p.check(str(scylla.get("image", "")).startswith("scylladb/scylla"), where, "scylla must use the scylladb/scylla image")
    want = ["--smp", "1", "--memory", "750M", "--overprovisioned", "1", "--developer-mode", "1"]
    p.check(all(x in command(scylla) for x in want), where, f"scylla command must include {' '.join(want)}")
    nats = services.get("nats", {})
    p.check(str(nats.get("image", "")).startswith("nats:"), where, "nats must use the nats image")
    p.check("-js" in command(nats), where, "nats must run with -js")
    migrate, worker = services.get("migrate", {}), services.get("worker", {})
    p.check(command(migrate)[-1:] == ["migrate"], where, "service migrate must run `migrate`")
    p.check(command(worker)[-1:] == ["run"], where, "service worker must run `run`")
    p.check((worker.get("depends_on") or {}).get("migrate", {}).get("condition") == "service_completed_successfully",
            where, "worker must start after migrate completed successfully")
    if worker.get("stop_grace_period"):
        p.check(duration_seconds(worker["stop_grace_period"]) > 20, where, "stop_grace_period must exceed shutdown.timeout")
    # The image is distroless (no shell, no curl): the health check is the binary's own `health` command.
    test = (worker.get("healthcheck") or {}).get("test") or []
    p.check(test == ["CMD", "/usr/local/bin/score-worker", "health"], where,
            'worker healthcheck must be ["CMD", "/usr/local/bin/score-worker", "health"]')
    env = worker.get("environment") or {}
    p.check("nats:4222" in env.get("SCORE_WORKER__NATS__URL", ""), where, "worker must reach NATS by service name")
    p.check("scylla:9042" in env.get("SCORE_WORKER__SCYLLA__NODES", ""), where, "worker must reach ScyllaDB by service name")

    # Prometheus: its config file and rule files are mounted; targets are compose services; job names are the rules'.
    prom = services.get("prometheus", {})
    cfg_arg = next((a.split("=", 1)[1] for a in command(prom) if a.startswith("--config.file=")), "/etc/prometheus/prometheus.yml")
    cfg = host_path("prometheus", cfg_arg)
    if p.check(cfg and cfg.is_file(), where, f"Prometheus config {cfg_arg} is not a mounted file"):
        pcfg = load_yaml(cfg)
        for rf in pcfg.get("rule_files", []):
            p.check((cfg.parent / rf).is_file(), rel(cfg), f"rule file {rf} does not exist")
        p.check({"recording.yml", "alerts.yml"} <= set(pcfg.get("rule_files", [])), rel(cfg), "must load recording.yml and alerts.yml")
        rule_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
        for sc in pcfg.get("scrape_configs", []):
            for st in sc.get("static_configs", []):
                for target in st.get("targets", []):
                    hostname = target.split(":")[0]
                    p.check(hostname == "localhost" or hostname in services, rel(cfg),
                            f"target {target} is not a compose service")
        jobs = {sc["job_name"] for sc in pcfg.get("scrape_configs", [])}
        p.check(WORKER_JOB in jobs, rel(cfg), f"no {WORKER_JOB} job")
        for job in jobs & {"nats", "scylla", WORKER_JOB}:
            p.check(job in rule_jobs or job == WORKER_JOB, rel(cfg), f"job {job} is not one the rules use")

    # Grafana: provisioning directories mounted, the dashboards provider path mounted, datasource is the service.
    graf = services.get("grafana", {})
    prov = host_path("grafana", "/etc/grafana/provisioning/dashboards")
    if p.check(prov and prov.is_dir(), where, "Grafana dashboard provisioning is not mounted"):
        for f in sorted(prov.glob("*.y*ml")):
            for provider in load_yaml(f).get("providers", []):
                dash_dir = host_path("grafana", provider.get("options", {}).get("path", ""))
                p.check(dash_dir and dash_dir.is_dir() and any(dash_dir.glob("*.json")), rel(f),
                        f"provider path {provider.get('options', {}).get('path')} is not a mounted directory of dashboards")
    dsdir = host_path("grafana", "/etc/grafana/provisioning/datasources")
    if p.check(dsdir and dsdir.is_dir(), where, "Grafana datasource provisioning is not mounted"):
        for f in sorted(dsdir.glob("*.y*ml")):
            for ds in load_yaml(f).get("datasources", []):
                host = re.sub(r"^https?://", "", ds.get("url", "")).split(":")[0]
                p.check(host in services, rel(f), f"datasource url {ds.get('url')} is not a compose service")
    home = (graf.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        hp = host_path("grafana", home)
        p.check(hp and hp.is_file(), where, f"home dashboard {home} is not a mounted file")
    return p.done(f"{len(services)} services: files, mounts, provisioning and Prometheus targets resolve")


def check_dockerfile():
    p = Problems()
    where = rel(DOCKERFILE)
    lines = []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    p.check(len(stages) >= 2, where, "must be multi-stage (a build stage and a runtime stage)")
    p.check(any("cargo build" in l and "--release" in l and "--locked" in l for l in lines), where,
            "the build stage must run cargo build --release --locked")
    final = lines[stages[-1]:] if stages else lines
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    ignored = [l.strip().rstrip("/") for l in ignore.read_text().splitlines()
               if l.strip() and not l.startswith("#")] if ignore.exists() else []
    for l in lines:
        if l.upper().startswith(("COPY ", "ADD ")) and "--from=" not in l:
            args = [a for a in l.split()[1:] if not a.startswith("--")]
            for src in args[:-1]:
                p.check(src == "." or (ROOT / src).exists(), where, f"COPY source {src} does not exist in the repository")
                p.check(src.rstrip("/") not in ignored, where, f"COPY source {src} is excluded by {ignore.name}")
    user = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    p.check(user and user[-1].split(":")[0] not in {"0", "root"}, where, "the runtime stage must set a non-root USER")
    p.check("nonroot" in final[0] or user, where, "runtime user")
    cmd = [l for l in final if l.upper().startswith("CMD ")]
    p.check(cmd and json.loads(cmd[-1][4:]) == ["run"], where, 'the default command must be CMD ["run"]')
    entry = [l for l in final if l.upper().startswith("ENTRYPOINT ")]
    p.check(entry and json.loads(entry[-1][11:])[0].endswith("/score-worker"), where, "ENTRYPOINT must be the score-worker binary")
    p.check(any(l.upper().startswith("EXPOSE ") and "9102" in l for l in final), where, "EXPOSE 9102")
    return p.done(f"{len(stages)} stages, COPY sources exist, non-root user, default command run")


# --------------------------------------------------------------------------------------------- metrics contract

def parse_scrape(text):
    """({sample name: [labels dict]}, {family: type}, problems) of a text exposition."""
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
    text = METRICS_DOC.read_text()
    section = text.split("## Worker", 1)[1].split("\n## ", 1)[0]
    out = {}
    for m in re.finditer(r"^\| `(score_worker_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*)\| ([^|]*)\|", section, re.M):
        values = {}
        for lm in re.finditer(r"`(\w+)` ∈ ((?:`\w+`(?:, )?)+)", m.group(4)):
            values[lm.group(1)] = re.findall(r"`(\w+)`", lm.group(2))
        out[m.group(1)] = (m.group(2), values)
    return out


def check_metrics_contract(scrape_path):
    p = Problems()
    samples, types = parse_scrape(pathlib.Path(scrape_path).read_text())
    records = recording_rules()
    used, matchers = {}, []
    for where, expr in all_rule_exprs():
        for name in metric_names(expr):
            if name.startswith(WORKER_PREFIX):
                used.setdefault(name, where)
        matchers += [(where, *m) for m in equality_matchers(expr) if m[0].startswith(WORKER_PREFIX)]
    for name, where in sorted(used.items()):
        p.check(name in samples, where, f"{name} is not exported")
    for where, name, label, value in matchers:
        if label in {"job", "instance", "namespace", "pod", "node", "container", "app"} or value.startswith("$"):
            continue  # target labels, added by Prometheus
        p.check(any(s.get(label) == value for s in samples.get(name, [])), where,
                f'{name}{{{label}="{value}"}} is not exported (pre-initialise every label value)')
    # Documented families: exported, with the documented type and every documented label value.
    table = contract_table()
    p.check(len(table) >= 14, rel(METRICS_DOC), f"only {len(table)} worker metrics parsed from the contract table")
    for name, (kind, values) in table.items():
        if p.check(name in types, scrape_path, f"{name} ({kind}) is not exported"):
            p.check(types[name] == kind, scrape_path, f"{name} is a {types[name]}, the contract says {kind}")
        series = samples.get(name + "_bucket" if kind == "histogram" else name, [])
        for label, wanted in values.items():
            have = {s.get(label) for s in series}
            for v in wanted:
                p.check(v in have, scrape_path, f'{name}{{{label}="{v}"}} is not exported')
    # Thresholds of the rules on worker histograms are exported bucket boundaries.
    buckets = documented_buckets()
    for group, rule in alert_rules():
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
    return p.done(f"{len(used)} score_worker_* names used by rules and dashboards are exported; "
                  f"{len(table)} contract metrics with their types and label values")


# ------------------------------------------------------------------------------------------- live dashboards

def _prometheus(base, path, **params):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def _substitute(expr, variables):
    for var, value in variables.items():
        expr = expr.replace("${%s}" % var, value).replace("$" + var, value)
    return expr


def check_live_dashboards(base):
    """Every panel query returns a series with a value from the live Prometheus at `base`."""
    p = Problems()
    records = recording_rules()
    rules = 0
    for group in _prometheus(base, "/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            rules += 1
            p.check(rule.get("health") == "ok", f"rule {rule['name']}",
                    f"evaluates with {rule.get('health')}: {rule.get('lastError')}")
    proved, skipped = 0, []
    for path, board in dashboards():
        for panel in data_panels(board):
            where = f"{path.stem} panel {panel.get('title')!r}"
            for target in panel.get("targets", []):
                expr = _substitute(target.get("expr", ""), LIVE_VARS)
                names = set()
                for name in metric_names(expr):
                    names |= metric_names(records[name]) if name in records else {name}
                if not any(n.startswith(WORKER_PREFIX) for n in names):
                    skipped.append(f"{where} {target.get('refId')}: needs {', '.join(sorted(names))}, "
                                   "exported by no process of this repository")
                    continue
                try:
                    result = _prometheus(base, "/api/v1/query", query=expr)["result"]
                except (OSError, RuntimeError, ValueError) as err:
                    p.add(where, f"query {target.get('refId')} failed: {err}")
                    continue
                values = [float(r["value"][1]) for r in result]
                finite = [v for v in values if math.isfinite(v)]
                if p.check(result, where, f"query {target.get('refId')} returned no series: {expr}") and \
                        p.check(finite, where, f"query {target.get('refId')} returned only NaN: {expr}"):
                    proved += 1
                    print(f"  PASS  {where} {target.get('refId')}: {len(result)} series, {len(finite)} with a value")
    for line in skipped:
        print(f"  SKIP  {line}")
    return p.done(f"{proved} panel queries return series with values; {len(skipped)} skipped (other services); "
                  f"{rules} rules evaluate without error")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    table = {
        "rules": check_rules, "runbooks": check_runbooks, "contract": check_contract,
        "dashboards": check_dashboards, "dashboard-rules": write_dashboard_rules, "derive-config": derive_config,
        "kubernetes": check_kubernetes, "kubernetes-fixtures": check_kubernetes_fixtures, "crs-json": crs_json, "builtin-manifests": builtin_manifests, "compose": check_compose,
        "dockerfile": check_dockerfile, "metrics-contract": check_metrics_contract,
        "live-dashboards": check_live_dashboards,
    }
    if cmd not in table:
        print(__doc__)
        return 2
    return table[cmd](*args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
