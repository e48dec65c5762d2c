"""`contract` and `metrics-contract`: each passes on the repository's files and fails on a broken copy."""
import unittest

from check_deploy.contract import check_contract, check_metrics_contract, parse_scrape

from .support import CheckTest

DOC = "docs/metrics.md"
SCRAPE = "deploy/prometheus/tests/worker-metrics.prom"


class ContractTest(CheckTest):
    def test_real_contract_passes(self):
        self.assertPasses(check_contract)

    def test_undocumented_metric_fails(self):
        self.edit(DOC, "`score_worker_messages_received_total`", "`score_worker_msgs_received_total`", -1)
        self.assertFailsWith("score_worker_messages_received_total is not documented in docs/metrics.md",
                             check_contract)

    def test_alert_threshold_between_buckets_fails(self):
        self.edit("deploy/prometheus/alerts.yml", "job:score_worker_processing_duration_seconds:p95_rate5m > 2",
                  "job:score_worker_processing_duration_seconds:p95_rate5m > 3")
        self.assertFailsWith("ScoreWorkerSlowProcessing: threshold 3 on score_worker_processing_duration_seconds "
                             "is not a bucket boundary", check_contract)

    def test_undefined_recording_rule_fails(self):
        self.edit("deploy/prometheus/alerts.yml", "job:score_worker_processing_duration_seconds:p95_rate5m > 2",
                  "job:score_worker_processing_duration_seconds:p90_rate5m > 2")
        self.assertFailsWith("recording rule job:score_worker_processing_duration_seconds:p90_rate5m is not defined",
                             check_contract)


class MetricsContractTest(CheckTest):
    def test_sample_scrape_passes(self):
        self.assertPasses(check_metrics_contract, self.root / SCRAPE)

    def test_metric_missing_from_the_scrape_fails(self):
        self.edit(SCRAPE, "\nscore_worker_messages_received_total 0\n", "\n")
        self.assertFailsWith("score_worker_messages_received_total is not exported", check_metrics_contract,
                             self.root / SCRAPE)

    def test_metric_of_another_type_fails(self):
        self.edit(SCRAPE, "# TYPE score_worker_messages_received_total counter",
                  "# TYPE score_worker_messages_received_total gauge")
        self.assertFailsWith("score_worker_messages_received_total is a gauge, the contract says counter",
                             check_metrics_contract, self.root / SCRAPE)

    def test_missing_label_value_fails(self):
        self.edit(SCRAPE, 'outcome="ack"', 'outcome="acked"', -1)
        self.assertFailsWith('score_worker_processing_duration_seconds{outcome="ack"} is not exported',
                             check_metrics_contract, self.root / SCRAPE)

    def test_parse_scrape(self):
        samples, types = parse_scrape('# TYPE a counter\na{x="1",y="2"} 3\nb 4\n')
        self.assertEqual(samples, {"a": [{"x": "1", "y": "2"}], "b": [{}]})
        self.assertEqual(types, {"a": "counter"})


if __name__ == "__main__":
    unittest.main()
