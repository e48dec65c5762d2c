"""The PromQL helpers and duration parsing the checks are built on."""
import unittest

from check_deploy.common import duration_seconds
from check_deploy.promql import aggregations, comparisons, equality_matchers, metric_names


class PromqlTest(unittest.TestCase):
    def test_metric_names_skip_functions_keywords_labels_and_numbers(self):
        expr = 'sum by (namespace, job) (rate(a_total{job="x"}[5m])) / on (job) b_bucket > 1e6 and bool c:d:e'
        self.assertEqual(metric_names(expr), {"a_total", "b_bucket", "c:d:e"})

    def test_aggregations_see_prefix_and_suffix_clauses(self):
        self.assertEqual(aggregations("sum by (namespace) (x) + max(y) without (pod)"),
                         [("sum", "by", ["namespace"]), ("max", "without", ["pod"])])
        self.assertEqual(aggregations("count(x)"), [("count", None, [])])

    def test_comparisons_and_equality_matchers(self):
        self.assertEqual(comparisons("a:b:c > 0.05 and d >= 3"), [("a:b:c", ">", 0.05), ("d", ">=", 3.0)])
        self.assertEqual(equality_matchers('m{a="1", b!="2", c=~"3"}'), [("m", "a", "1")])

    def test_duration_seconds(self):
        self.assertEqual(duration_seconds("1m30s"), 90)
        self.assertEqual(duration_seconds("250ms"), 0.25)
        with self.assertRaises(ValueError):
            duration_seconds("90 s")


if __name__ == "__main__":
    unittest.main()
