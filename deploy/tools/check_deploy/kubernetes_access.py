"""Kubernetes access: the worker's and the migration Job's NetworkPolicies (ingress only to the metrics port,
egress only to NATS, the database and DNS), TLS on with CA files from mounted Secrets, two database roles."""
import pathlib
import re

from .common import matches, rel


def _service_namespace(host):
    """`svc.ns.svc.cluster.local` -> `ns` (None for anything that is not a cluster Service name)."""
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else None


def _endpoints(urls, default_port):
    out = []
    for url in urls:
        hostport = re.sub(r"^[a-z]+://", "", url.strip()).split("/")[0].split("@")[-1]
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", str(default_port))
        out.append((host, int(port)))
    return out


def _peer_namespaces(peer):
    return (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


def _wanted_endpoints(effective, names):
    """{name: (ports, namespaces)} of NATS and/or the database, from the configuration."""
    ends = {"NATS": _endpoints(effective[("nats", "url")].split(","), 4222),
            "database": _endpoints(effective[("scylla", "nodes")], 9042)}
    return {name: ({port for _, port in ends[name]}, {_service_namespace(h) for h, _ in ends[name]})
            for name in names}


def _check_egress(p, w, egress, wanted, allowed_extra):
    """Every egress rule goes to one of `wanted` (ports, namespaces) or to DNS; together they cover them."""
    dns_ok = {"UDP": False, "TCP": False}
    covered = {name: set() for name in wanted}
    for i, rule in enumerate(egress):
        ports = rule.get("ports") or []
        peers = rule.get("to") or []
        if not p.check(ports and peers, w, f"egress rule {i} must name both destinations and ports"):
            continue
        namespaces = {_peer_namespaces(peer) for peer in peers}
        numbers = {pt.get("port") for pt in ports}
        if numbers == {53}:
            kube_dns = all((peer.get("podSelector") or {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
                           for peer in peers)
            p.check(namespaces == {"kube-system"} and kube_dns, w,
                    f"egress rule {i}: port 53 only to kube-dns in kube-system")
            for pt in ports:
                dns_ok[pt.get("protocol", "TCP")] = True
            continue
        matched = [name for name, (wports, wns) in wanted.items()
                   if namespaces <= wns and numbers <= wports | allowed_extra.get(name, set())]
        if p.check(matched, w, f"egress rule {i} ({sorted(namespaces, key=str)} ports {sorted(numbers, key=str)}) "
                               f"goes to none of {' or '.join(sorted(wanted))} or DNS"):
            for pt in ports:
                p.check(pt.get("protocol", "TCP") == "TCP", w, f"egress rule {i}: NATS and CQL are TCP")
            covered[matched[0]] |= numbers
    for name, (wports, wns) in wanted.items():
        p.check(None not in wns, w, f"{name} address is not a cluster Service name: write its egress rule by hand")
        p.check(wports <= covered[name], w,
                f"no egress to {name} ports {sorted(wports - covered[name])} in namespace {sorted(wns, key=str)} "
                "(configmap.yaml)")
    p.check(all(dns_ok.values()), w, "egress to DNS needs port 53 over UDP and TCP")


def _the_one_policy(p, by_kind, labels, where, whose, prefix):
    """The one NetworkPolicy selecting pods with `labels`, as (its path, its spec), checked to govern both
    directions; None (a problem reported at `where`) unless exactly one selects them."""
    policies = [(path, np) for path, np in by_kind.get("NetworkPolicy", [])
                if matches(np["spec"].get("podSelector"), labels)]
    if not p.check(len(policies) == 1, where,
                   f"expected one NetworkPolicy selecting {whose}, found {len(policies)}"):
        return None
    path, np = policies[0]
    w, s = rel(path), np["spec"]
    p.check(sorted(s.get("policyTypes", [])) == ["Egress", "Ingress"], w,
            f"{prefix}policyTypes must be Ingress and Egress (otherwise one direction stays open)")
    return w, s


def check_network_policy(p, by_kind, pod_labels, containers, effective, k8s):
    """Ingress only to the metrics port; egress only to NATS, the database and DNS (from configmap.yaml)."""
    found = _the_one_policy(p, by_kind, pod_labels, rel(k8s), "the worker pods", "")
    if found is None:
        return
    w, s = found
    metrics = {pt.get("containerPort") for c in containers for pt in c.get("ports", []) if pt.get("name") == "metrics"}
    ingress = s.get("ingress", [])
    p.check(ingress, w, "no ingress rule: Prometheus could not scrape /metrics")
    for i, rule in enumerate(ingress):
        ports = rule.get("ports") or []
        p.check(ports and all(pt.get("port") in {"metrics"} | metrics and pt.get("protocol", "TCP") == "TCP"
                              for pt in ports), w,
                f"ingress rule {i} must allow only the metrics port (TCP {sorted(metrics)})")
        p.check(rule.get("from"), w, f"ingress rule {i} allows every source: name Prometheus' namespace")
    wanted = _wanted_endpoints(effective, ["NATS", "database"])
    # ScyllaDB's shard-aware port (CQL port + 10000) is where the driver opens its per-shard connections.
    extra = {"database": {port + 10000 for port in wanted["database"][0]}}
    _check_egress(p, w, s.get("egress", []), wanted, extra)


def _mounted_file(container, volumes, path):
    """The volume (and whether the file is among its items) that holds `path` in `container`, or None."""
    path = pathlib.PurePosixPath(path)
    for m in container.get("volumeMounts", []):
        if path.parent == pathlib.PurePosixPath(m["mountPath"]):
            volume = volumes.get(m["name"], {})
            items = (volume.get("secret") or volume.get("configMap") or {}).get("items")
            return volume, items is None or path.name in {i.get("path") for i in items}
    return None


def _secret_env(container, name):
    ref = next((e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", []) if e["name"] == name),
               None)
    return ref["name"] if ref else None


def check_credentials(p, by_kind, dep, effective, k8s):
    """TLS on to NATS and the database, its CA files from mounted Secrets; the worker and the migration Job log in
    to the database as different roles (different Secrets); the Job inside a NetworkPolicy of its own."""
    where = f"{rel(k8s / 'configmap.yaml')} config.toml"
    urls = [u.strip() for u in effective[("nats", "url")].split(",")]
    p.check(effective[("nats", "tls", "enabled")] is True or all(u.startswith("tls://") for u in urls), where,
            "NATS without TLS: set nats.tls.enabled = true (credentials and scores would cross the network in clear)")
    p.check(effective[("scylla", "tls", "enabled")] is True, where,
            "the database without TLS: set scylla.tls.enabled = true")
    pod = dep["spec"]["template"]["spec"]
    jobs = by_kind.get("Job", [])
    users = [("worker", f"{rel(k8s / 'deployment.yaml')} {dep['metadata']['name']}", pod, {"nats", "scylla"})]
    users += [("migration Job", rel(path), job["spec"]["template"]["spec"], {"scylla"}) for path, job in jobs]
    for who, w, spec, sections in users:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            for section in sorted(sections):
                for key in ("ca_file", "cert_file", "key_file"):
                    path = effective.get((section, "tls", key), "")
                    if not path:
                        continue
                    found = _mounted_file(c, volumes, path)
                    if p.check(found, w, f"{who}: {section}.tls.{key} {path} is in no mounted volume"):
                        volume, listed = found
                        p.check(volume.get("secret", {}).get("secretName"), w,
                                f"{who}: {section}.tls.{key} {path} must come from a Secret")
                        p.check(listed, w, f"{who}: {section}.tls.{key}: the volume's items do not include {path}")
    worker_c = pod.get("containers", [{}])[0]
    worker_db = {_secret_env(worker_c, n) for n in ("SCORE_WORKER__SCYLLA__USER", "SCORE_WORKER__SCYLLA__PASSWORD")}
    for path, job in jobs:
        jw = rel(path)
        c = job["spec"]["template"]["spec"]["containers"][0]
        job_db = {_secret_env(c, n) for n in ("SCORE_WORKER__SCYLLA__USER", "SCORE_WORKER__SCYLLA__PASSWORD")}
        p.check(None not in job_db, jw, "the migration Job's database user and password must come from a Secret")
        shared = sorted((job_db & worker_db) - {None})
        p.check(not shared, jw, f"the migration Job and the worker share the database Secret {shared}: the worker's "
                                "role must not be able to change the schema (two roles: deploy/README.md)")
        labels = job["spec"]["template"]["metadata"].get("labels", {})
        found = _the_one_policy(p, by_kind, labels, jw, "the migration Job's pods", "the Job's ")
        if found is None:
            continue
        w, s = found
        p.check(not s.get("ingress"), w, "the migration Job serves nothing: no ingress rule")
        wanted = _wanted_endpoints(effective, ["database"])
        _check_egress(p, w, s.get("egress", []), wanted,
                      {"database": {port + 10000 for port in wanted["database"][0]}})
