"""`runbooks`: passes on the repository's runbooks and fails on a broken copy."""
import unittest

from check_deploy.runbooks import check_runbooks, kebab, slug

from .support import CheckTest

PAGE = "docs/runbooks/gateway-shard-down.md"


class RunbooksTest(CheckTest):
    def test_real_runbooks_pass(self):
        self.assertPasses(check_runbooks)

    def test_missing_section_fails(self):
        self.edit(PAGE, "## Mitigation\n", "## What to do\n")
        self.assertFailsWith("missing section '## Mitigation'", check_runbooks)

    def test_missing_page_fails(self):
        (self.root / PAGE).unlink()
        self.assertFailsWith("docs/runbooks/gateway-shard-down.md does not exist", check_runbooks)

    def test_title_other_than_the_alert_fails(self):
        self.edit(PAGE, "# GatewayShardDown\n", "# Gateway shard down\n")
        self.assertFailsWith("no heading with anchor #gatewaysharddown", check_runbooks)

    def test_prometheusrule_with_another_link_fails(self):
        self.edit("deploy/kubernetes/prometheusrule.yaml", "gateway-shard-down.md#", "gateway-shard-gone.md#")
        self.assertFailsWith("(run deploy/tools/sync_generated.py)", check_runbooks)

    def test_broken_link_between_pages_fails(self):
        self.edit(PAGE, "](../../deploy/prometheus/alerts.yml)", "](../../deploy/prometheus/alert.yml)")
        self.assertFailsWith("points to a missing file", check_runbooks)

    def test_anchor_and_page_names(self):
        self.assertEqual(slug("Gateway shard: down!"), "gateway-shard-down")
        self.assertEqual(kebab("NatsJetStreamStorageNearLimit"), "nats-jetstream-storage-near-limit")


if __name__ == "__main__":
    unittest.main()
