"""Kubernetes labels: the recommended app.kubernetes.io labels on every object and pod template, one instance,
the version of Cargo.toml; selectors use only labels that never change."""
import pathlib

import sync_generated

from .common import load_yaml, rel

RECOMMENDED_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of"]
# Labels that change with every release or tool: never in a selector (a Deployment's selector is immutable).
UNSTABLE_LABELS = {"app.kubernetes.io/version", "app.kubernetes.io/managed-by"}
# The Deployment's selector as released: changing it makes `kubectl apply` fail on every existing cluster.
WORKER_SELECTOR = {"app.kubernetes.io/name": "score-worker"}


def _selectors(doc):
    spec = doc.get("spec", {})
    kind = doc.get("kind")
    if kind in {"Deployment", "PodDisruptionBudget", "PodMonitor"}:
        yield "selector", spec.get("selector")
    if kind == "NetworkPolicy":
        yield "podSelector", spec.get("podSelector")
    for c in spec.get("template", {}).get("spec", {}).get("topologySpreadConstraints", []):
        yield "topologySpreadConstraints.labelSelector", c.get("labelSelector")


def check_labels(p, docs, by_kind, k8s):
    """The recommended app.kubernetes.io labels on every object and pod template; selectors use stable ones."""
    version = sync_generated.package_version()
    instances = set()
    for path, doc in docs:
        if doc.get("kind") == "Kustomization":
            continue
        w = f"{rel(path)} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        labels = doc.get("metadata", {}).get("labels", {})
        places = [("metadata.labels", labels)]
        template = doc.get("spec", {}).get("template")
        if template is not None:
            places.append(("pod template", template.get("metadata", {}).get("labels", {})))
        for where, have in places:
            for key in RECOMMENDED_LABELS:
                p.check(str(have.get(key, "")).strip(), w, f"{where}: no {key}")
            p.check(str(have.get("app.kubernetes.io/version")) == version, w,
                    f"{where}: app.kubernetes.io/version {have.get('app.kubernetes.io/version')!r} is not Cargo.toml's "
                    f"{version!r} (run deploy/tools/sync_generated.py)")
            p.check(have.get("app.kubernetes.io/part-of") == "score-pipeline", w,
                    f"{where}: part-of must be score-pipeline")
            instances.add(have.get("app.kubernetes.io/instance"))
            if where == "pod template":
                for key in RECOMMENDED_LABELS:
                    p.check(have.get(key) == labels.get(key), w, f"pod template {key} differs from the object's")
        for where, selector in _selectors(doc):
            selector = selector or {}
            keys = set(selector.get("matchLabels", {})) | {e.get("key") for e in selector.get("matchExpressions", [])}
            p.check(not keys & UNSTABLE_LABELS, w, f"{where} uses {sorted(keys & UNSTABLE_LABELS)}, which change")
    p.check(len(instances) == 1, rel(k8s),
            f"one app.kubernetes.io/instance for the whole installation, found {sorted(instances, key=str)}")
    for path, dep in by_kind.get("Deployment", []):
        p.check(dep["spec"].get("selector", {}).get("matchLabels") == WORKER_SELECTOR and
                not dep["spec"]["selector"].get("matchExpressions"), rel(path),
                f"the Deployment's selector must stay {WORKER_SELECTOR}: it is immutable on existing clusters")
    kust = pathlib.Path(k8s) / "kustomization.yaml"
    managed = [lab for lab in load_yaml(kust).get("labels", [])
               if "app.kubernetes.io/managed-by" in lab.get("pairs", {})]
    p.check(managed and managed[0].get("includeTemplates") is True and not managed[0].get("includeSelectors"),
            rel(kust), "labels: app.kubernetes.io/managed-by with includeTemplates: true and no includeSelectors "
                       "(selectors stay as released)")
