"""What the tests share: a private copy of the checked files per test, edits that must find their text, and
running a check with its output captured."""
import contextlib
import io
import json
import pathlib
import shutil
import tempfile
import unittest

from check_deploy import paths

# What the checks read, copied per test so a test can break it; everything else at the top of the repository is
# linked (the Dockerfile's COPY sources are checked to exist).
COPIED = ("deploy", "docs", "config", "Cargo.toml")
NOT_LINKED = {".git", ".local", "target", ".ruff_cache"}


def run(check, *args):
    """(exit status, printed output) of `check(*args)`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = check(*args)
    return rc, out.getvalue()


class CheckTest(unittest.TestCase):
    """A test whose checks read a copy of the repository's files in `self.root`, which it may break."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        repo = paths.REPOSITORY
        for entry in repo.iterdir():
            target = pathlib.Path(tmp.name) / entry.name
            if entry.name in COPIED:
                if entry.is_dir():
                    shutil.copytree(entry, target, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
                else:
                    shutil.copy2(entry, target)
            elif entry.name not in NOT_LINKED:
                target.symlink_to(entry)
        rooted = paths.rooted_at(tmp.name)
        self.root = rooted.__enter__()
        self.addCleanup(rooted.__exit__, None, None, None)

    def edit(self, rel, old, new, count=1):
        """Replace the first `count` occurrences of `old` (all of them: -1) in the copy of `rel`; fails when `old`
        is not there, so a test cannot pass because the file it breaks has changed."""
        path = self.root / rel
        text = path.read_text()
        self.assertGreaterEqual(text.count(old), max(count, 1), f"{old!r} is not in {rel} (test out of date)")
        path.write_text(text.replace(old, new, count))

    def edit_json(self, rel, change):
        """Load the copy of the JSON file `rel`, let `change` modify it, write it back."""
        path = self.root / rel
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc, indent=2))

    def assertPasses(self, check, *args):
        rc, out = run(check, *args)
        self.assertEqual(rc, 0, f"{check.__name__} failed on the real files:\n{out}")
        return out

    def assertFailsWith(self, expected, check, *args):
        """`check` exits 1 and one of its problems contains `expected`."""
        rc, out = run(check, *args)
        self.assertEqual(rc, 1, f"{check.__name__} passed on a broken copy:\n{out}")
        self.assertIn(expected, out)
        return out
