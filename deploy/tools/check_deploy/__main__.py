"""Usage: python deploy/tools/check_deploy CHECK [ARGS]   (or, with deploy/tools on the path, -m check_deploy)

    rules              alert conventions, the seven groups, a firing and a not-firing test each;
                       every aggregation in alerts and recording rules keeps `namespace`
    runbooks           every runbook_url is absolute, under the one base of deploy/prometheus/runbook-base-url
                       (rule files and PrometheusRule alike), and resolves to a file and heading; one page per alert
    contract           metrics used by rules and dashboards are documented in docs/metrics.md;
                       histogram thresholds sit on documented bucket boundaries
    dashboards         structure, title + unit, datasource variable, thresholds = alert rules
    dashboard-rules OUT  every panel query as a recording rule, for `promtool check rules`
    derive-config IN OUT prometheus.yml with kubernetes_sd_configs swapped for static_configs
    kubernetes [DIR]   Deployment, ConfigMap, PDB, NetworkPolicy, KEDA and PodMonitor invariants;
                       recommended app.kubernetes.io labels on every object and pod template;
                       credentials: TLS on, CA files from mounted Secrets, the worker's and the
                       migration Job's database roles apart, the Job inside a NetworkPolicy
    kubernetes-fixtures  each broken copy of deploy/kubernetes in tools/fixtures/kubernetes.yaml
                       fails `kubernetes` with its expected problem (and the real one passes)
    crs-json           the custom resources as JSON, for validate_crs.mjs
    builtin-manifests  the manifests of built-in kinds, for kubernetes-validate
    compose            docker-compose.yml references, Grafana provisioning, compose Prometheus
    dockerfile         COPY sources, multi-stage, non-root user, default command `run`
    metrics-contract SCRAPE   a /metrics scrape exports every score_worker_* series used
    live-dashboards URL  every panel query, asked of the Prometheus at URL (which scrapes a live
                       worker under load, scripts/check-dashboards-live.sh), returns a series
                       with a value; every rule evaluates without error
"""
import pathlib
import sys

if not __package__:
    # Run as `python deploy/tools/check_deploy`: import the package (and sync_generated) from deploy/tools.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from check_deploy import contract, docker, grafana, kubernetes, kubernetes_fixtures, live, prometheus, runbooks  # noqa: E402

COMMANDS = {
    "rules": prometheus.check_rules,
    "runbooks": runbooks.check_runbooks,
    "contract": contract.check_contract,
    "dashboards": grafana.check_dashboards,
    "dashboard-rules": grafana.write_dashboard_rules,
    "derive-config": prometheus.derive_config,
    "kubernetes": kubernetes.check_kubernetes,
    "kubernetes-fixtures": kubernetes_fixtures.check_kubernetes_fixtures,
    "crs-json": kubernetes.crs_json,
    "builtin-manifests": kubernetes.builtin_manifests,
    "compose": docker.check_compose,
    "dockerfile": docker.check_dockerfile,
    "metrics-contract": contract.check_metrics_contract,
    "live-dashboards": live.check_live_dashboards,
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
