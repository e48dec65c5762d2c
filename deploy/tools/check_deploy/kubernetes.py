"""Kubernetes manifests: the invariants of the Deployment, ConfigMap, PDB, KEDA ScaledObject, PodMonitor and
migration Job (network policies, credentials and labels in their own modules); the manifests listed for
kubernetes-validate (built-in kinds) and validate_crs.mjs (custom resources)."""
import json
import pathlib
import tomllib

from . import paths
from .common import (
    WORKER_JOB,
    Problems,
    default_config,
    duration_seconds,
    env_key_exists,
    flatten,
    load_yaml,
    load_yaml_all,
    matches,
    rel,
)
from .kubernetes_access import check_credentials, check_network_policy
from .kubernetes_labels import check_labels

KEDA_NATS_KEYS = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
                  "activationLagThreshold", "useHttps"}
KEDA_NATS_REQUIRED = {"natsServerMonitoringEndpoint", "account", "stream", "consumer"}
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule", "ServiceMonitor", "TriggerAuthentication"}
PROBES = (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz"))


def k8s_docs(k8s=None):
    """(path, document) for every document of every manifest in `k8s` (default deploy/kubernetes)."""
    docs = []
    for path in sorted(pathlib.Path(k8s or paths.K8S).glob("*.yaml")):
        for doc in load_yaml_all(path):
            docs.append((path, doc))
    return docs


def check_kubernetes(k8s=None):
    """Every invariant of the manifests in `k8s` (default deploy/kubernetes; a fixture passes a broken copy)."""
    k8s = pathlib.Path(k8s or paths.K8S)
    p = Problems()
    docs = k8s_docs(k8s)
    by_kind = {}
    for path, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append((path, doc))
    defaults = default_config()
    _check_kustomization(p, k8s)
    config = _check_configmap(p, by_kind, defaults)
    effective = dict(defaults)
    effective.update(dict(flatten(config)))

    deployments = by_kind.get("Deployment", [])
    p.check(len(deployments) == 1, rel(k8s), "expected one Deployment")
    if not deployments:
        return p.done("")
    path, dep = deployments[0]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = dep["spec"]["template"]["spec"].get("containers", [])
    secrets_used = _check_deployment(p, path, dep, effective, defaults)
    p.check(not by_kind.get("Secret"), rel(k8s), "no Secret manifests in the repository: reference them")
    p.check(len(secrets_used) >= 2, f"{rel(path)} {dep['metadata']['name']}",
            "expects Secret references for NATS and the database")
    _check_pdb(p, by_kind, dep, pod_labels)
    p.check(by_kind.get("PodDisruptionBudget"), rel(k8s), "no PodDisruptionBudget")
    _check_scaled_object(p, by_kind, dep, effective)
    p.check(by_kind.get("ScaledObject"), rel(k8s), "no KEDA ScaledObject")
    p.check(not by_kind.get("HorizontalPodAutoscaler"), rel(k8s), "KEDA owns the HPA: no second one")
    _check_pod_monitor(p, by_kind, pod_labels, containers)
    p.check(by_kind.get("PodMonitor"), rel(k8s), "no PodMonitor")
    p.check(by_kind.get("PrometheusRule"), rel(k8s), "no PrometheusRule")
    for path, job in by_kind.get("Job", []):
        c = job["spec"]["template"]["spec"]["containers"][0]
        p.check((c.get("args", []) or [""])[-1] == "migrate", rel(path), "the migration Job must run `migrate`")
        p.check(c.get("image") == containers[0].get("image"), rel(path),
                "the migration Job must use the worker's image")
    check_network_policy(p, by_kind, pod_labels, containers, effective, k8s)
    check_credentials(p, by_kind, dep, effective, k8s)
    check_labels(p, docs, by_kind, k8s)
    return p.done(f"{len(docs)} manifests consistent (Deployment, ConfigMap, PDB, NetworkPolicy, ScaledObject, "
                  "PodMonitor, Job, TLS and database roles, recommended labels)")


def _check_kustomization(p, k8s):
    """Every listed file exists; every manifest but the migration Job is listed."""
    kust = k8s / "kustomization.yaml"
    listed = set(load_yaml(kust).get("resources", []))
    for name in sorted(listed):
        p.check((k8s / name).is_file(), rel(kust), f"lists a missing file {name}")
    for path in sorted(k8s.glob("*.yaml")):
        if path.name not in {"kustomization.yaml", "migrate-job.yaml"}:
            p.check(path.name in listed, rel(kust), f"does not list {path.name}")


def _check_configmap(p, by_kind, defaults):
    """TOML whose every key exists in config/default.toml with the same type; no credentials. Returns it."""
    config = {}
    for path, cm in by_kind.get("ConfigMap", []):
        text = cm.get("data", {}).get("config.toml")
        if not p.check(text, rel(path), "no data.config.toml"):
            continue
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            p.add(rel(path), f"config.toml does not parse: {err}")
            continue
        for key, value in flatten(config):
            dotted = ".".join(key)
            if p.check(key in defaults, rel(path), f"config.toml key {dotted} is not in {rel(paths.DEFAULT_CONFIG)}"):
                p.check(type(value) is type(defaults[key]), rel(path),
                        f"{dotted} is a {type(value).__name__}, {rel(paths.DEFAULT_CONFIG)} has a "
                        f"{type(defaults[key]).__name__}")
            if key[-1] in {"password", "token", "nkey_seed"}:
                p.check(value == "", rel(path), f"{dotted}: credentials belong in a Secret")
    return config


def _check_deployment(p, path, dep, effective, defaults):
    """Replicas, rollout, pod security, zone spread, grace period, each container; returns the Secrets used."""
    where = f"{rel(path)} {dep['metadata']['name']}"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    p.check(matches(spec.get("selector"), pod_labels), where, "selector does not match the pod labels")
    p.check(spec.get("replicas", 1) >= 2, where, "replicas must be at least 2")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    p.check(spec.get("strategy", {}).get("type") == "RollingUpdate" and str(ru.get("maxUnavailable")) == "0"
            and str(ru.get("maxSurge", "0")) not in {"0", "0%"}, where,
            "rolling update must never go below the desired count (maxUnavailable 0, maxSurge > 0)")
    psc = pod.get("securityContext", {})
    p.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where,
            "pod must run as a non-root user (runAsNonRoot, runAsUser != 0)")
    p.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where,
            "seccompProfile must be RuntimeDefault")
    zones = [c for c in pod.get("topologySpreadConstraints", [])
             if c.get("topologyKey") == "topology.kubernetes.io/zone"]
    p.check(zones and all(matches(c.get("labelSelector"), pod_labels) for c in zones), where,
            "needs a topologySpreadConstraint over topology.kubernetes.io/zone selecting its own pods")
    shutdown = duration_seconds(effective.get(("shutdown", "timeout"), "20s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    p.check(grace >= shutdown + 10, where,
            f"terminationGracePeriodSeconds {grace} must exceed shutdown.timeout {shutdown:g}s by at least 10s")
    p.check(pod.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken should be false")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets_used = set()
    for c in pod.get("containers", []):
        secrets_used |= _check_container(p, f"{where} container {c['name']}", c, volumes, defaults)
    return secrets_used


def _check_container(p, cw, c, volumes, defaults):
    """Security context, resources, port, probes, command, config mount, environment; returns its Secrets."""
    sc = c.get("securityContext", {})
    p.check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
    p.check(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
    p.check("ALL" in sc.get("capabilities", {}).get("drop", []), cw, "capabilities must drop ALL")
    res = c.get("resources", {})
    p.check({"cpu", "memory"} <= set(res.get("requests", {})), cw, "needs cpu and memory requests")
    p.check("memory" in res.get("limits", {}), cw, "needs a memory limit")
    ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports", [])}
    p.check(ports.get("metrics") == 9102, cw, "needs the container port `metrics` 9102")
    for probe, want in PROBES:
        get = c.get(probe, {}).get("httpGet", {})
        if probe != "startupProbe" or c.get(probe):
            p.check(get.get("path") == want, cw, f"{probe} must GET {want}, has {get.get('path')!r}")
            p.check(get.get("port") in ports or get.get("port") in ports.values(), cw,
                    f"{probe} port is not a container port")
    args = c.get("args", []) + c.get("command", [])
    p.check(args and args[-1] == "run", cw, "must run the `run` subcommand")
    if "--config" in args:
        cfg = args[args.index("--config") + 1]
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        mount = mounts.get(str(pathlib.PurePosixPath(cfg).parent))
        ok = mount and volumes.get(mount["name"], {}).get("configMap")
        p.check(ok, cw, f"--config {cfg} is not in a mounted ConfigMap")
    if sc.get("readOnlyRootFilesystem"):
        mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
        p.check("/tmp" in mounted, cw, "a read-only root filesystem needs a writable /tmp volume")
    env = {e["name"]: e for e in c.get("env", [])}
    secrets_used = set()
    for name, e in env.items():
        if name.startswith("SCORE_WORKER__"):
            p.check(env_key_exists(name, defaults), cw, f"{name} names no key of {rel(paths.DEFAULT_CONFIG)}")
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secrets_used.add(ref["name"])
    for name in ("SCORE_WORKER__NATS__AUTH__PASSWORD", "SCORE_WORKER__SCYLLA__PASSWORD"):
        p.check(env.get(name, {}).get("valueFrom", {}).get("secretKeyRef"), cw, f"{name} must come from a Secret")
    p.check(env.get("SCORE_WORKER__LOG__FORMAT", {}).get("value") == "json", cw,
            "SCORE_WORKER__LOG__FORMAT should be json")
    return secrets_used


def _check_pdb(p, by_kind, dep, pod_labels):
    for path, pdb in by_kind.get("PodDisruptionBudget", []):
        pw = rel(path)
        p.check(matches(pdb["spec"].get("selector"), pod_labels), pw, "selector does not match the worker pods")
        p.check("maxUnavailable" in pdb["spec"] or pdb["spec"].get("minAvailable", 0) < dep["spec"].get("replicas", 1),
                pw, "must allow one disruption")
        # Otherwise pods that are running but not ready (every pod during a NATS or database outage) count as
        # disrupted already, and a node drain waits for an outage that is not the node's to end.
        p.check(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", pw,
                "unhealthyPodEvictionPolicy must be AlwaysAllow (a dependency outage must not block node drains)")


def _check_scaled_object(p, by_kind, dep, effective):
    """KEDA: the Deployment as target, at least 2 replicas, the nats-jetstream trigger, sizing, fallback."""
    for path, so in by_kind.get("ScaledObject", []):
        sw = rel(path)
        s = so["spec"]
        p.check(s.get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"], sw,
                "scaleTargetRef is not the Deployment")
        lo, hi = s.get("minReplicaCount", 0), s.get("maxReplicaCount", 100)
        p.check(lo >= 2, sw, "minReplicaCount must keep at least 2 replicas")
        p.check(hi >= lo, sw, "maxReplicaCount below minReplicaCount")
        triggers = [t for t in s.get("triggers", []) if t.get("type") == "nats-jetstream"]
        if p.check(triggers, sw, "no nats-jetstream trigger"):
            _check_nats_trigger(p, sw, triggers[0].get("metadata", {}), effective)
        per_pod = (effective[("batch", "max_inflight")] * effective[("batch", "max_scores")]
                   + effective[("nats", "pull_batch")])
        p.check(hi * per_pod <= effective[("nats", "max_ack_pending")], sw,
                f"maxReplicaCount {hi} x {per_pod} in-flight messages per pod exceeds nats.max_ack_pending "
                f"{effective[('nats', 'max_ack_pending')]}: extra replicas would idle")
        # Fallback: when KEDA cannot read the lag (NATS monitoring unreachable) it sets a known replica count
        # instead of leaving the last one, however low. KEDA only applies it to AverageValue triggers.
        fb = s.get("fallback")
        if p.check(fb, sw, "needs a fallback (replicas while the lag cannot be read)"):
            p.check(isinstance(fb.get("failureThreshold"), int) and fb["failureThreshold"] >= 1, sw,
                    "fallback.failureThreshold must be a positive integer")
            p.check(isinstance(fb.get("replicas"), int) and lo <= fb["replicas"] <= hi, sw,
                    f"fallback.replicas must lie within minReplicaCount {lo} and maxReplicaCount {hi}")
            p.check(all(t.get("metricType", "AverageValue") == "AverageValue" for t in s.get("triggers", [])), sw,
                    "KEDA applies a fallback only to AverageValue triggers")


def _check_nats_trigger(p, sw, md, effective):
    p.check(set(md) <= KEDA_NATS_KEYS, sw, f"unknown nats-jetstream metadata {sorted(set(md) - KEDA_NATS_KEYS)}")
    p.check(KEDA_NATS_REQUIRED <= set(md), sw,
            f"missing nats-jetstream metadata {sorted(KEDA_NATS_REQUIRED - set(md))}")
    p.check(all(isinstance(v, str) for v in md.values()), sw, "trigger metadata values must be strings")
    p.check("://" not in md.get("natsServerMonitoringEndpoint", ""), sw,
            "natsServerMonitoringEndpoint takes host:port, no scheme")
    p.check(md.get("stream") == effective[("nats", "stream")], sw, "stream differs from nats.stream")
    p.check(md.get("consumer") == effective[("nats", "consumer")], sw, "consumer differs from nats.consumer")
    try:
        p.check(int(md.get("lagThreshold", "10")) > 0, sw, "lagThreshold must be a positive integer")
    except ValueError:
        p.add(sw, "lagThreshold must be an integer string")


def _check_pod_monitor(p, by_kind, pod_labels, containers):
    metrics_ports = {pt.get("name") for c in containers for pt in c.get("ports", [])}
    for path, pm in by_kind.get("PodMonitor", []):
        mw = rel(path)
        s = pm["spec"]
        p.check(matches(s.get("selector"), pod_labels), mw, "selector does not match the worker pods")
        job_label = s.get("jobLabel")
        p.check(job_label and pod_labels.get(job_label) == WORKER_JOB, mw,
                f"jobLabel must make job=\"{WORKER_JOB}\" (the rules select on it)")
        for ep in s.get("podMetricsEndpoints", []):
            p.check(ep.get("port") in metrics_ports, mw, f"port {ep.get('port')!r} is not a container port name")
            p.check(ep.get("path", "/metrics") == "/metrics", mw, "path must be /metrics")


def builtin_manifests():
    """The manifests of built-in kinds (for kubernetes-validate, which only warns on kinds it has no schema for)."""
    files = sorted({rel(path) for path, doc in k8s_docs()
                    if doc.get("kind") not in CUSTOM_KINDS and doc.get("kind") != "Kustomization"})
    print("\n".join(files))
    return 0


def crs_json():
    items = [{"file": rel(path), "doc": doc} for path, doc in k8s_docs()
             if doc.get("kind") in CUSTOM_KINDS]
    print(json.dumps(items))
    return 0
