"""`rules` and `derive-config`: each passes on the repository's files and fails on a broken copy."""
import shutil
import subprocess
import unittest

import yaml
from check_deploy.prometheus import check_rules, derive_config

from .support import CheckTest, run

ALERTS = "deploy/prometheus/alerts.yml"
RECORDING = "deploy/prometheus/recording.yml"
TESTS = "deploy/prometheus/tests"


class RulesTest(CheckTest):
    def test_real_rules_pass(self):
        self.assertPasses(check_rules)

    def test_unknown_severity_fails(self):
        self.edit(ALERTS, "severity: warning", "severity: page")
        self.assertFailsWith("GatewayRoutingLatencyHigh: severity 'page' not in", check_rules)

    def test_for_under_a_minute_fails(self):
        self.edit(ALERTS, "for: 10m", "for: 30s")
        self.assertFailsWith("is under 1m", check_rules)

    def test_missing_runbook_url_fails(self):
        self.edit(ALERTS, "runbook_url: https://", "runbook: https://")
        self.assertFailsWith("annotation runbook_url missing or empty", check_rules)

    def test_aggregation_dropping_namespace_fails(self):
        self.edit(RECORDING, "sum by (namespace, job) (rate(score_worker_messages_received_total[5m]))",
                  "sum by (job) (rate(score_worker_messages_received_total[5m]))")
        self.assertFailsWith("sum by (job) drops namespace", check_rules)

    def test_recording_rule_name_outside_the_convention_fails(self):
        self.edit(RECORDING, "record: job:score_worker_messages_processed:rate5m",
                  "record: score_worker_messages_processed_rate5m")
        self.assertFailsWith("recording rule names are level:metric:operations", check_rules)

    def test_alert_without_a_firing_test_fails(self):
        for path in sorted((self.root / TESTS).glob("*_test.yml")):
            doc = yaml.safe_load(path.read_text())
            for test in doc.get("tests", []):
                for case in test.get("alert_rule_test", []):
                    if case["alertname"] == "GatewayRoutingLatencyHigh":
                        case["exp_alerts"] = []
            path.write_text(yaml.safe_dump(doc))
        self.assertFailsWith("GatewayRoutingLatencyHigh has no test case in which it fires", check_rules)

    def test_wrong_group_order_fails(self):
        self.edit(ALERTS, "  - name: gateway\n", "  - name: gateways\n")
        self.assertFailsWith("groups are ['gateways'", check_rules)


class DeriveConfigTest(CheckTest):
    def test_real_config_has_its_kubernetes_discovery_swapped(self):
        out = self.root / "derived.yml"
        self.assertPasses(derive_config, self.root / "deploy/prometheus/prometheus.yml", out)
        derived = out.read_text()
        self.assertNotIn("kubernetes_sd_configs", derived)
        self.assertIn("127.0.0.1:9100", derived)

    def test_config_without_kubernetes_discovery_fails(self):
        # Nothing swapped means the copy checks nothing of the real discovery: the check says so.
        rc, out = run(derive_config, self.root / "deploy/prometheus/prometheus-compose.yml", self.root / "d.yml")
        self.assertEqual(rc, 1, out)
        self.assertIn("0 kubernetes_sd_configs replaced", out)

    @unittest.skipUnless(shutil.which("promtool"), "promtool is not installed")
    def test_promtool_rejects_the_copy_of_a_broken_config(self):
        self.edit("deploy/prometheus/prometheus.yml", "scrape_interval:", "scrape_intervall:")
        out = self.root / "derived.yml"
        run(derive_config, self.root / "deploy/prometheus/prometheus.yml", out)
        result = subprocess.run(["promtool", "check", "config", str(out)], capture_output=True, text=True)
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main()
