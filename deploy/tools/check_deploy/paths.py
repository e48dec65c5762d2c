"""Where the checked files are, in one place: the tests point every check at a broken copy with `rooted_at`."""
import contextlib
import pathlib

import sync_generated

REPOSITORY = pathlib.Path(__file__).resolve().parents[3]


def _set_root(root):
    global ROOT, DEPLOY, PROM, ALERTS, RECORDING, RULE_TESTS, DASHBOARDS, K8S, K8S_FIXTURES, COMPOSE, DOCKERFILE
    global METRICS_DOC, RUNBOOKS, DEFAULT_CONFIG
    ROOT = pathlib.Path(root).resolve()
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


_set_root(REPOSITORY)


@contextlib.contextmanager
def rooted_at(root):
    """Every path (and sync_generated's runbook base and Cargo.toml) under `root` instead of the repository."""
    saved = (ROOT, sync_generated.RUNBOOK_BASE, sync_generated.CARGO)
    _set_root(root)
    sync_generated.RUNBOOK_BASE = ROOT / sync_generated.RUNBOOK_BASE.relative_to(saved[0])
    sync_generated.CARGO = ROOT / sync_generated.CARGO.relative_to(saved[0])
    try:
        yield ROOT
    finally:
        _set_root(saved[0])
        sync_generated.RUNBOOK_BASE, sync_generated.CARGO = saved[1:]
