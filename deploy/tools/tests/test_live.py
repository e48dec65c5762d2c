"""`live-dashboards`, without the live servers: its judgement of the rules' health and of each panel query's
answer, given Prometheus API answers (the live run, scripts/check-dashboards-live.sh, asks a real Prometheus)."""
import unittest

from check_deploy.common import LIVE_VARS, substitute
from check_deploy.live import check_live_dashboards, needed_metrics

from .support import run


def answers(rule_health="ok", series=lambda query: [{"metric": {}, "value": [0, "1.5"]}]):
    """An `api` for check_live_dashboards: every rule with `rule_health`, every query answered by `series`."""
    def api(base, path, **params):
        if path == "/api/v1/rules":
            return {"groups": [{"rules": [{"name": "job:x:rate5m", "health": rule_health, "lastError": "boom"}]}]}
        return {"result": series(params["query"])}
    return api


class LiveTest(unittest.TestCase):
    def test_every_query_with_a_value_passes(self):
        rc, out = run(check_live_dashboards, "http://prometheus", answers())
        self.assertEqual(rc, 0, out)
        self.assertIn("SKIP", out)  # the gateway's panels: no process of this repository exports them

    def test_rule_that_fails_to_evaluate_fails(self):
        rc, out = run(check_live_dashboards, "http://prometheus", answers(rule_health="err"))
        self.assertEqual(rc, 1, out)
        self.assertIn("rule job:x:rate5m: evaluates with err: boom", out)

    def test_query_without_series_fails(self):
        rc, out = run(check_live_dashboards, "http://prometheus", answers(series=lambda q: []))
        self.assertEqual(rc, 1, out)
        self.assertIn("returned no series", out)

    def test_query_with_only_nan_fails(self):
        nan = [{"metric": {}, "value": [0, "NaN"]}]
        rc, out = run(check_live_dashboards, "http://prometheus", answers(series=lambda q: nan))
        self.assertEqual(rc, 1, out)
        self.assertIn("returned only NaN", out)

    def test_query_that_errors_fails(self):
        def refuse(query):
            raise RuntimeError("/api/v1/query: bad_data: parse error")
        rc, out = run(check_live_dashboards, "http://prometheus", answers(series=refuse))
        self.assertEqual(rc, 1, out)
        self.assertIn("failed: /api/v1/query: bad_data", out)

    def test_needed_metrics_look_through_recording_rules(self):
        records = {"job:a:rate5m": "sum by (job) (rate(score_worker_a_total[5m]))"}
        self.assertEqual(needed_metrics('job:a:rate5m{job="x"} / b', records), {"score_worker_a_total", "b"})

    def test_live_variables_replace_every_dollar(self):
        expr = 'rate(x{job="$job"}[$__rate_interval]) and y{job=~"${read_job}"}'
        self.assertEqual(substitute(expr, LIVE_VARS), 'rate(x{job="score-worker"}[30s]) and y{job=~".+"}')


if __name__ == "__main__":
    unittest.main()
