"""The live check: every panel query, asked of a Prometheus that scrapes a worker under load, returns a series
with a value, and every rule evaluates without error (scripts/check-dashboards-live.sh starts all of it)."""
import json
import math
import urllib.parse
import urllib.request

from .common import LIVE_VARS, WORKER_PREFIX, Problems, dashboards, data_panels, recording_rules, substitute
from .promql import metric_names


def prometheus_api(base, path, **params):
    """The `data` of a Prometheus HTTP API answer; RuntimeError when its status is not success."""
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def needed_metrics(expr, records):
    """The metric names `expr` reads, through the recording rules `records` it selects."""
    names = set()
    for name in metric_names(expr):
        names |= metric_names(records[name]) if name in records else {name}
    return names


def check_live_dashboards(base, api=prometheus_api):
    """Every panel query returns a series with a value from the live Prometheus at `base` (asked through `api`)."""
    p = Problems()
    records = recording_rules()
    rules = 0
    for group in api(base, "/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            rules += 1
            p.check(rule.get("health") == "ok", f"rule {rule['name']}",
                    f"evaluates with {rule.get('health')}: {rule.get('lastError')}")
    proved, skipped = 0, []
    for path, board in dashboards():
        for panel in data_panels(board):
            where = f"{path.stem} panel {panel.get('title')!r}"
            for target in panel.get("targets", []):
                expr = substitute(target.get("expr", ""), LIVE_VARS)
                names = needed_metrics(expr, records)
                if not any(n.startswith(WORKER_PREFIX) for n in names):
                    skipped.append(f"{where} {target.get('refId')}: needs {', '.join(sorted(names))}, "
                                   "exported by no process of this repository")
                    continue
                try:
                    result = api(base, "/api/v1/query", query=expr)["result"]
                except (OSError, RuntimeError, ValueError) as err:
                    p.add(where, f"query {target.get('refId')} failed: {err}")
                    continue
                finite = [v for v in (float(r["value"][1]) for r in result) if math.isfinite(v)]
                if p.check(result, where, f"query {target.get('refId')} returned no series: {expr}") and \
                        p.check(finite, where, f"query {target.get('refId')} returned only NaN: {expr}"):
                    proved += 1
                    print(f"  PASS  {where} {target.get('refId')}: {len(result)} series, {len(finite)} with a value")
    for line in skipped:
        print(f"  SKIP  {line}")
    return p.done(f"{proved} panel queries return series with values; {len(skipped)} skipped (other services); "
                  f"{rules} rules evaluate without error")
