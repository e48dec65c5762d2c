"""`dashboards` and `dashboard-rules`: each passes on the repository's dashboards and fails on a broken copy."""
import shutil
import subprocess
import unittest

import yaml
from check_deploy.grafana import check_dashboards, write_dashboard_rules

from .support import CheckTest, run

BOARD = "deploy/grafana/dashboards/score-worker.json"
LATENCY = 7  # "Processing latency p95 / p99": the recording rule of ScoreWorkerSlowProcessing, red at 2 s


def panel(doc, panel_id):
    return next(p for p in doc["panels"] if p["id"] == panel_id)


class DashboardsTest(CheckTest):
    def test_real_dashboards_pass(self):
        self.assertPasses(check_dashboards)

    def test_other_refresh_fails(self):
        self.edit_json(BOARD, lambda d: d.update(refresh="1m"))
        self.assertFailsWith("refresh is '1m', want '30s'", check_dashboards)

    def test_panel_without_unit_fails(self):
        self.edit_json(BOARD, lambda d: panel(d, LATENCY)["fieldConfig"]["defaults"].pop("unit"))
        self.assertFailsWith("panel 'Processing latency p95 / p99': no unit", check_dashboards)

    def test_threshold_other_than_the_alert_fails(self):
        def move_red(d):
            for step in panel(d, LATENCY)["fieldConfig"]["defaults"]["thresholds"]["steps"]:
                if step["color"] == "red":
                    step["value"] = 3
        self.edit_json(BOARD, move_red)
        self.assertFailsWith("needs a red threshold at 2, the threshold of ScoreWorkerSlowProcessing",
                             check_dashboards)

    def test_fixed_rate_window_fails(self):
        self.edit(BOARD, "[$__rate_interval]", "[5m]")
        self.assertFailsWith("should use [$__rate_interval]", check_dashboards)

    def test_unknown_variable_fails(self):
        self.edit(BOARD, '{job=\\"$job\\"}', '{job=\\"$jobs\\"}')
        self.assertFailsWith("unknown variable $jobs", check_dashboards)

    def test_description_naming_an_unknown_alert_fails(self):
        self.edit(BOARD, "The red line is the alert ScoreWorkerSlowProcessing",
                  "The red line is the alert ScoreWorkerTooSlow")
        self.assertFailsWith("description names an unknown alert ScoreWorkerTooSlow", check_dashboards)

    def test_datasource_other_than_the_variable_fails(self):
        self.edit_json(BOARD, lambda d: panel(d, LATENCY)["datasource"].update(uid="prometheus"))
        self.assertFailsWith("datasource is not ${datasource}", check_dashboards)


class DashboardRulesTest(CheckTest):
    def test_every_panel_query_becomes_a_rule_without_variables(self):
        out = self.root / "rules.yml"
        self.assertPasses(write_dashboard_rules, out)
        rules = yaml.safe_load(out.read_text())["groups"][0]["rules"]
        self.assertGreaterEqual(len(rules), 30)
        self.assertFalse([r["expr"] for r in rules if "$" in r["expr"]])
        self.assertEqual(len({r["record"] for r in rules}), len(rules), "record names must be unique")

    @unittest.skipUnless(shutil.which("promtool"), "promtool is not installed")
    def test_promtool_rejects_a_panel_query_that_is_not_promql(self):
        self.edit(BOARD, '"expr": "job:score_worker_processing_duration_seconds:p95_rate5m{',
                  '"expr": "sum(job:score_worker_processing_duration_seconds:p95_rate5m{')
        out = self.root / "rules.yml"
        self.assertEqual(run(write_dashboard_rules, out)[0], 0)
        result = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("parse error", result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main()
