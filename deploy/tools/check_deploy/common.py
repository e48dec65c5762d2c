"""What every check shares: the findings collector, file loading, the rules and dashboards as data."""
import json
import math
import pathlib
import re
import tomllib

import yaml

from . import paths

WORKER_JOB = "score-worker"
WORKER_PREFIX = "score_worker_"


# Grafana variables and what they stand for when a panel query is compiled.
# `read_job`: the jobs of the services that link the read API (all of them: `.+`).
DASHBOARD_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "job": WORKER_JOB,
                  "read_job": ".+"}
# The same for the live check: Prometheus scrapes every second, so a 30 s window holds 30 samples.
LIVE_VARS = dict(DASHBOARD_VARS, __rate_interval="30s", __interval="1s", __range="5m")


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
        return str(path.relative_to(paths.ROOT))
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
    for group in load_yaml(paths.ALERTS)["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule


def recording_rules():
    return {r["record"]: r["expr"] for g in load_yaml(paths.RECORDING)["groups"] for r in g["rules"]}


def dashboards():
    for path in sorted(paths.DASHBOARDS.glob("*.json")):
        yield path, json.loads(path.read_text())


def panels(board):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def data_panels(board):
    return [p for p in panels(board) if p.get("type") != "row"]


def threshold_steps(panel):
    """The threshold steps ({color, value}) of a Grafana panel."""
    return panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])


def bucket_in(value, bounds):
    return any(math.isclose(value, b, rel_tol=1e-9) for b in bounds)


def default_config():
    """{(section, ..., key): value} of config/default.toml."""
    return dict(flatten(tomllib.loads(paths.DEFAULT_CONFIG.read_text())))


def flatten(table, prefix=()):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def env_key_exists(name, defaults):
    """Whether the SCORE_WORKER__SECTION__KEY variable `name` overrides a key of `defaults` (default_config())."""
    parts = tuple(x.lower() for x in name[len("SCORE_WORKER__"):].split("__"))
    return parts in defaults


def matches(selector, labels):
    """Whether a Kubernetes label selector (matchLabels) is set and selects `labels`."""
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items()) and selector


def substitute(expr, variables):
    """`expr` with each Grafana variable ($var, ${var}) replaced by its stand-in value."""
    for var, value in variables.items():
        expr = expr.replace(f"${{{var}}}", value).replace("$" + var, value)
    return expr
