"""The checks of deploy/, docs/metrics.md and docs/runbooks/ that no off-the-shelf tool does.

Run by scripts/check-deploy.sh (one check per call) and scripts/check-metrics-contract.sh as
`python deploy/tools/check_deploy CHECK [ARGS]` (usage: __main__.py). Each check prints what it found and exits 1
when something is wrong. Needs PyYAML; everything else is the standard library.

Layout, one module per area:
    paths                where the checked files are (the tests point them at a broken copy)
    common               the findings collector, file loading, the rules and dashboards as data
    promql               metric names, matchers, comparisons and aggregations of a PromQL expression
    prometheus           alert and recording rule conventions, their promtool tests; the derived prometheus.yml
    runbooks             runbook_url of every alert resolves to a page and heading
    contract             docs/metrics.md documents what rules and dashboards use; a scrape exports it
    grafana              dashboard structure and thresholds; panel queries as recording rules for promtool
    kubernetes           Deployment, ConfigMap, PDB, KEDA, PodMonitor, Job; manifest lists for the validators
    kubernetes_access    NetworkPolicies, TLS and database roles
    kubernetes_labels    the recommended app.kubernetes.io labels and stable selectors
    kubernetes_fixtures  broken copies of deploy/kubernetes each fail `kubernetes`
    docker               docker-compose.yml and the Dockerfile
    live                 every panel query against a live Prometheus
The tests are in deploy/tools/tests/.
"""
