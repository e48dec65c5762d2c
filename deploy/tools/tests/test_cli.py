"""The command line as scripts/check-deploy.sh calls it: `python deploy/tools/check_deploy CHECK [ARGS]`."""
import re
import subprocess
import sys
import unittest

from check_deploy import __main__ as cli
from check_deploy import paths

from .support import run

PACKAGE = paths.REPOSITORY / "deploy" / "tools" / "check_deploy"


class CliTest(unittest.TestCase):
    def test_the_package_directory_runs_a_check(self):
        result = subprocess.run([sys.executable, str(PACKAGE), "dockerfile"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("2 stages", result.stdout)

    def test_unknown_check_prints_the_usage(self):
        rc, out = run(cli.main, ["check_deploy", "no-such-check"])
        self.assertEqual(rc, 2)
        self.assertIn("kubernetes-fixtures", out)

    def test_every_check_the_scripts_call_exists(self):
        scripts = "".join((paths.REPOSITORY / "scripts" / name).read_text()
                          for name in ("check-deploy.sh", "check-dashboards-live.sh", "check-metrics-contract.sh"))
        called = set(re.findall(r'check_deploy"\)? ([a-z-]+)', scripts))
        self.assertGreaterEqual(len(called), 12)
        self.assertEqual(called - set(cli.COMMANDS), set())


if __name__ == "__main__":
    unittest.main()
