"""The Kubernetes fixtures: each broken copy of deploy/kubernetes in tools/fixtures/kubernetes.yaml must fail
`kubernetes` with its expected problem, and the real manifests must pass."""
import contextlib
import io
import pathlib
import shutil
import tempfile

from . import paths
from .common import load_yaml
from .kubernetes import check_kubernetes


def apply_edit(text, old, new):
    """`text` with `old` replaced by `new` once: as a substring, or else as a run of whole lines compared without
    their indentation (YAML block scalars drop it), `new` indented like the first line it replaces. None if absent."""
    if old in text:
        return text.replace(old, new, 1)
    lines, olds = text.split("\n"), [line.strip() for line in old.split("\n")]
    for i in range(len(lines) - len(olds) + 1):
        if [line.strip() for line in lines[i:i + len(olds)]] == olds:
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            news = [indent + line if line else line for line in new.split("\n")] if new else []
            return "\n".join(lines[:i] + news + lines[i + len(olds):])
    return None


def _run(k8s):
    """(exit status, output) of `kubernetes` on the manifests in `k8s`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = check_kubernetes(k8s)
    return rc, out.getvalue()


def check_kubernetes_fixtures():
    """Each fixture (a broken copy of deploy/kubernetes) fails `kubernetes` with its expected problem."""
    fixtures = load_yaml(paths.K8S_FIXTURES)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        rc, out = _run(paths.K8S)
        if rc != 0:
            failed.append(f"the real manifests do not pass:\n{out}")
        for fx in fixtures:
            k8s = pathlib.Path(tmp) / fx["name"]
            shutil.copytree(paths.K8S, k8s)
            for edit in fx["edits"]:
                target = k8s / edit["file"]
                text = apply_edit(target.read_text(), edit["old"], edit["new"])
                if text is None:
                    failed.append(f"{fx['name']}: `{edit['old']}` is not in {edit['file']} (fixture out of date)")
                    break
                target.write_text(text)
            else:
                rc, out = _run(k8s)
                hits = [line.strip() for line in out.splitlines() if fx["expect"] in line]
                if rc == 0 or not hits:
                    failed.append(f"{fx['name']}: expected a problem with `{fx['expect']}`, got:\n{out}")
                else:
                    print(f"  {fx['name']}: {hits[0]}")
    for f in failed:
        print(f"  FAIL {f}")
    print(f"{len(fixtures)} broken fixtures each fail with their problem; the real manifests pass"
          if not failed else f"{len(failed)} fixture problem(s)")
    return 1 if failed else 0
