"""`kubernetes` (with its network policy, credential and label checks), `kubernetes-fixtures`, and the manifest
lists for the validators: each check passes on the repository's manifests and fails on a broken copy."""
import json
import unittest

from check_deploy.kubernetes import builtin_manifests, check_kubernetes, crs_json
from check_deploy.kubernetes_fixtures import apply_edit, check_kubernetes_fixtures

from .support import CheckTest, run

K8S = "deploy/kubernetes/"
FIXTURES = "deploy/tools/fixtures/kubernetes.yaml"


class KubernetesTest(CheckTest):
    def test_real_manifests_pass(self):
        self.assertPasses(check_kubernetes)

    def test_a_single_replica_fails(self):
        self.edit(K8S + "deployment.yaml", "  replicas: 2\n", "  replicas: 1\n")
        self.assertFailsWith("replicas must be at least 2", check_kubernetes)

    def test_rollout_below_the_desired_count_fails(self):
        self.edit(K8S + "deployment.yaml", "maxUnavailable: 0", "maxUnavailable: 1")
        self.assertFailsWith("rolling update must never go below the desired count", check_kubernetes)

    def test_grace_period_shorter_than_the_shutdown_fails(self):
        self.edit(K8S + "deployment.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 25")
        self.assertFailsWith("terminationGracePeriodSeconds 25 must exceed shutdown.timeout 20s", check_kubernetes)

    def test_wrong_readiness_path_fails(self):
        self.edit(K8S + "deployment.yaml", "path: /readyz", "path: /healthz")
        self.assertFailsWith("readinessProbe must GET /readyz", check_kubernetes)

    def test_writable_root_filesystem_fails(self):
        self.edit(K8S + "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
        self.assertFailsWith("readOnlyRootFilesystem must be true", check_kubernetes)

    def test_configmap_key_unknown_to_the_defaults_fails(self):
        self.edit(K8S + "configmap.yaml", "max_ack_pending = 2000", "max_ack_pendings = 2000")
        self.assertFailsWith("config.toml key nats.max_ack_pendings is not in config/default.toml", check_kubernetes)

    def test_pdb_that_blocks_drains_fails(self):
        self.edit(K8S + "poddisruptionbudget.yaml", "unhealthyPodEvictionPolicy: AlwaysAllow",
                  "unhealthyPodEvictionPolicy: IfHealthyBudget")
        self.assertFailsWith("unhealthyPodEvictionPolicy must be AlwaysAllow", check_kubernetes)

    def test_more_replicas_than_the_consumer_feeds_fails(self):
        self.edit(K8S + "scaledobject.yaml", "maxReplicaCount: 6", "maxReplicaCount: 60")
        self.assertFailsWith("maxReplicaCount 60 x", check_kubernetes)

    def test_keda_stream_other_than_the_config_fails(self):
        self.edit(K8S + "scaledobject.yaml", 'stream: "SCORES"', 'stream: "SCORE"')
        self.assertFailsWith("stream differs from nats.stream", check_kubernetes)

    def test_fallback_outside_the_replica_range_fails(self):
        self.edit(K8S + "scaledobject.yaml", "    replicas: 6\n", "    replicas: 7\n")
        self.assertFailsWith("fallback.replicas must lie within minReplicaCount 2 and maxReplicaCount 6",
                             check_kubernetes)

    def test_pod_monitor_job_label_fails(self):
        self.edit(K8S + "podmonitor.yaml", "jobLabel: app.kubernetes.io/name", "jobLabel: app.kubernetes.io/part-of")
        self.assertFailsWith('jobLabel must make job="score-worker"', check_kubernetes)

    def test_unlisted_manifest_fails(self):
        self.edit(K8S + "kustomization.yaml", "  - podmonitor.yaml\n", "")
        self.assertFailsWith("does not list podmonitor.yaml", check_kubernetes)


class NetworkPolicyTest(CheckTest):
    def test_ingress_beyond_the_metrics_port_fails(self):
        self.edit(K8S + "networkpolicy.yaml", "        - port: metrics\n", "        - port: 8080\n")
        self.assertFailsWith("ingress rule 0 must allow only the metrics port", check_kubernetes)

    def test_egress_to_the_wrong_nats_port_fails(self):
        self.edit(K8S + "networkpolicy.yaml", "        - port: 4222\n", "        - port: 4223\n")
        self.assertFailsWith("goes to none of NATS or database or DNS", check_kubernetes)

    def test_dns_over_udp_only_fails(self):
        self.edit(K8S + "networkpolicy.yaml", "        - port: 53\n          protocol: TCP\n", "")
        self.assertFailsWith("egress to DNS needs port 53 over UDP and TCP", check_kubernetes)


class CredentialsTest(CheckTest):
    def test_database_without_tls_fails(self):
        text = (self.root / K8S / "configmap.yaml").read_text()
        broken = apply_edit(text, "# TLS to the database (ScyllaDB's client encryption), verified against the CA in "
                                  "score-worker-tls.\nenabled = true", "enabled = false")
        self.assertIsNotNone(broken, "the [scylla.tls] section of configmap.yaml changed (test out of date)")
        (self.root / K8S / "configmap.yaml").write_text(broken)
        self.assertFailsWith("the database without TLS", check_kubernetes)

    def test_job_with_the_workers_secret_fails(self):
        self.edit(K8S + "migrate-job.yaml", "name: score-worker-scylla-migrate", "name: score-worker-scylla", -1)
        self.assertFailsWith("the migration Job and the worker share the database Secret", check_kubernetes)


class LabelsTest(CheckTest):
    def test_missing_part_of_fails(self):
        self.edit(K8S + "serviceaccount.yaml", "    app.kubernetes.io/part-of: score-pipeline\n", "")
        self.assertFailsWith("ServiceAccount score-worker: metadata.labels: no app.kubernetes.io/part-of",
                             check_kubernetes)

    def test_version_other_than_cargo_fails(self):
        self.edit(K8S + "serviceaccount.yaml", 'app.kubernetes.io/version: "0.1.0"',
                  'app.kubernetes.io/version: "0.0.9"')
        self.assertFailsWith("app.kubernetes.io/version '0.0.9' is not Cargo.toml's", check_kubernetes)

    def test_second_instance_fails(self):
        self.edit(K8S + "serviceaccount.yaml", "app.kubernetes.io/instance: score-worker",
                  "app.kubernetes.io/instance: other")
        self.assertFailsWith("one app.kubernetes.io/instance for the whole installation", check_kubernetes)


class FixturesTest(CheckTest):
    def test_every_fixture_fails_with_its_problem(self):
        out = self.assertPasses(check_kubernetes_fixtures)
        self.assertIn("nats-without-tls: ", out)

    def test_fixture_whose_text_is_gone_fails(self):
        self.edit(FIXTURES, "old: \"name: score-worker-scylla-migrate\"", "old: \"name: no-such-secret\"")
        self.assertFailsWith("job-logs-in-as-the-worker: `name: no-such-secret` is not in migrate-job.yaml "
                             "(fixture out of date)", check_kubernetes_fixtures)

    def test_fixture_failing_with_another_problem_fails(self):
        self.edit(FIXTURES, "expect: NATS without TLS", "expect: NATS without a password")
        self.assertFailsWith("nats-without-tls: expected a problem with `NATS without a password`",
                             check_kubernetes_fixtures)

    def test_broken_real_manifests_fail(self):
        self.edit(K8S + "deployment.yaml", "  replicas: 2\n", "  replicas: 1\n")
        self.assertFailsWith("the real manifests do not pass", check_kubernetes_fixtures)

    def test_apply_edit_matches_lines_without_their_indentation(self):
        self.assertEqual(apply_edit("a:\n    b: 1\n    c: 2\n", "b: 1\nc: 2", "d: 3"), "a:\n    d: 3\n")
        self.assertIsNone(apply_edit("a: 1\n", "b: 1", "c"))


class ManifestListsTest(CheckTest):
    def test_builtin_and_custom_kinds_are_apart(self):
        builtin = run(builtin_manifests)[1].split()
        custom = {item["doc"]["kind"] for item in json.loads(run(crs_json)[1])}
        self.assertIn("deploy/kubernetes/deployment.yaml", builtin)
        self.assertNotIn("deploy/kubernetes/scaledobject.yaml", builtin)
        self.assertNotIn("deploy/kubernetes/kustomization.yaml", builtin)
        self.assertEqual(custom, {"ScaledObject", "PodMonitor", "PrometheusRule"})

    def test_a_custom_kind_is_not_handed_to_kubernetes_validate(self):
        self.edit(K8S + "podmonitor.yaml", "kind: PodMonitor", "kind: ServiceMonitor")
        self.assertNotIn("deploy/kubernetes/podmonitor.yaml", run(builtin_manifests)[1].split())


if __name__ == "__main__":
    unittest.main()
