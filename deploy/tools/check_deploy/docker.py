"""Docker: docker-compose.yml (referenced files, mounts, the services' commands, Grafana provisioning, the compose
Prometheus) and the Dockerfile (multi-stage, COPY sources, non-root user, default command `run`)."""
import json
import pathlib
import re

from . import paths
from .common import WORKER_JOB, Problems, default_config, duration_seconds, env_key_exists, load_yaml, rel

SCYLLA_FLAGS = ["--smp", "1", "--memory", "750M", "--overprovisioned", "1", "--developer-mode", "1"]
HEALTHCHECK = ["CMD", "/usr/local/bin/score-worker", "health"]


def _command(svc):
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else cmd


class _Mounts:
    """The bind mounts of every compose service: which host file a container path is."""

    def __init__(self):
        self.by_service = {}  # service -> {container path: host path}

    def add(self, service, target, host):
        self.by_service.setdefault(service, {})[target] = host

    def host_path(self, service, container_path):
        for target, host in sorted(self.by_service.get(service, {}).items(), key=lambda kv: -len(kv[0])):
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return host / pathlib.PurePosixPath(container_path).relative_to(target)
        return None


def check_compose():
    p = Problems()
    doc = load_yaml(paths.COMPOSE)
    where = rel(paths.COMPOSE)
    services = doc.get("services", {})
    mounts = _Mounts()
    for name, svc in services.items():
        _check_service(p, doc, name, svc, mounts)
    _check_commands(p, where, services)
    _check_prometheus(p, where, services, mounts)
    _check_grafana(p, where, services, mounts)
    return p.done(f"{len(services)} services: files, mounts, provisioning and Prometheus targets resolve")


def _check_service(p, doc, name, svc, mounts):
    """Build context, volumes, dependencies and SCORE_WORKER__ variables of one service; records its mounts."""
    base = paths.COMPOSE.parent
    services = doc.get("services", {})
    sw = f"{rel(paths.COMPOSE)} service {name}"
    build = svc.get("build")
    if build:
        ctx = (base / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        p.check(ctx.is_dir(), sw, f"build context {ctx} does not exist")
        if isinstance(build, dict) and build.get("dockerfile"):
            p.check((ctx / build["dockerfile"]).is_file(), sw, f"dockerfile {build['dockerfile']} does not exist")
    for vol in svc.get("volumes", []):
        src, _, rest = vol.partition(":")
        target = rest.split(":")[0]
        if src.startswith((".", "/")):
            host = (base / src).resolve()
            p.check(host.exists(), sw, f"bind mount source {src} does not exist")
            mounts.add(name, target, host)
        else:
            p.check(src in (doc.get("volumes") or {}), sw, f"named volume {src} is not declared")
    for dep in (svc.get("depends_on") or {}):
        p.check(dep in services, sw, f"depends on unknown service {dep}")
    for key in (svc.get("environment") or {}):
        if key.startswith("SCORE_WORKER__"):
            p.check(env_key_exists(key, default_config()), sw, f"{key} names no key of {rel(paths.DEFAULT_CONFIG)}")


def _check_commands(p, where, services):
    """Images and commands of ScyllaDB, NATS, the migration and the worker; the worker's health check and peers."""
    scylla = services.get("scylla", {})
    p.check(str(scylla.get("image", "")).startswith("scylladb/scylla"), where,
            "scylla must use the scylladb/scylla image")
    p.check(all(x in _command(scylla) for x in SCYLLA_FLAGS), where,
            f"scylla command must include {' '.join(SCYLLA_FLAGS)}")
    nats = services.get("nats", {})
    p.check(str(nats.get("image", "")).startswith("nats:"), where, "nats must use the nats image")
    p.check("-js" in _command(nats), where, "nats must run with -js")
    migrate, worker = services.get("migrate", {}), services.get("worker", {})
    p.check(_command(migrate)[-1:] == ["migrate"], where, "service migrate must run `migrate`")
    p.check(_command(worker)[-1:] == ["run"], where, "service worker must run `run`")
    p.check((worker.get("depends_on") or {}).get("migrate", {}).get("condition") == "service_completed_successfully",
            where, "worker must start after migrate completed successfully")
    if worker.get("stop_grace_period"):
        p.check(duration_seconds(worker["stop_grace_period"]) > 20, where,
                "stop_grace_period must exceed shutdown.timeout")
    # The image is distroless (no shell, no curl): the health check is the binary's own `health` command.
    test = (worker.get("healthcheck") or {}).get("test") or []
    p.check(test == HEALTHCHECK, where, f"worker healthcheck must be {json.dumps(HEALTHCHECK)}")
    env = worker.get("environment") or {}
    p.check("nats:4222" in env.get("SCORE_WORKER__NATS__URL", ""), where, "worker must reach NATS by service name")
    p.check("scylla:9042" in env.get("SCORE_WORKER__SCYLLA__NODES", ""), where,
            "worker must reach ScyllaDB by service name")


def _check_prometheus(p, where, services, mounts):
    """The compose Prometheus: config and rule files mounted; targets are compose services; jobs are the rules'."""
    prom = services.get("prometheus", {})
    cfg_arg = next((a.split("=", 1)[1] for a in _command(prom) if a.startswith("--config.file=")),
                   "/etc/prometheus/prometheus.yml")
    cfg = mounts.host_path("prometheus", cfg_arg)
    if not p.check(cfg and cfg.is_file(), where, f"Prometheus config {cfg_arg} is not a mounted file"):
        return
    pcfg = load_yaml(cfg)
    for rf in pcfg.get("rule_files", []):
        p.check((cfg.parent / rf).is_file(), rel(cfg), f"rule file {rf} does not exist")
    p.check({"recording.yml", "alerts.yml"} <= set(pcfg.get("rule_files", [])), rel(cfg),
            "must load recording.yml and alerts.yml")
    rule_jobs = set(re.findall(r'job="([^"]+)"', paths.ALERTS.read_text()))
    for sc in pcfg.get("scrape_configs", []):
        for st in sc.get("static_configs", []):
            for target in st.get("targets", []):
                hostname = target.split(":")[0]
                p.check(hostname == "localhost" or hostname in services, rel(cfg),
                        f"target {target} is not a compose service")
    jobs = {sc["job_name"] for sc in pcfg.get("scrape_configs", [])}
    p.check(WORKER_JOB in jobs, rel(cfg), f"no {WORKER_JOB} job")
    for job in jobs & {"nats", "scylla", WORKER_JOB}:
        p.check(job in rule_jobs or job == WORKER_JOB, rel(cfg), f"job {job} is not one the rules use")


def _check_grafana(p, where, services, mounts):
    """Provisioning directories mounted, the dashboards provider path mounted, the datasource is the service."""
    prov = mounts.host_path("grafana", "/etc/grafana/provisioning/dashboards")
    if p.check(prov and prov.is_dir(), where, "Grafana dashboard provisioning is not mounted"):
        for f in sorted(prov.glob("*.y*ml")):
            for provider in load_yaml(f).get("providers", []):
                dash_path = provider.get("options", {}).get("path", "")
                dash_dir = mounts.host_path("grafana", dash_path)
                p.check(dash_dir and dash_dir.is_dir() and any(dash_dir.glob("*.json")), rel(f),
                        f"provider path {provider.get('options', {}).get('path')} is not a mounted directory of "
                        "dashboards")
    dsdir = mounts.host_path("grafana", "/etc/grafana/provisioning/datasources")
    if p.check(dsdir and dsdir.is_dir(), where, "Grafana datasource provisioning is not mounted"):
        for f in sorted(dsdir.glob("*.y*ml")):
            for ds in load_yaml(f).get("datasources", []):
                host = re.sub(r"^https?://", "", ds.get("url", "")).split(":")[0]
                p.check(host in services, rel(f), f"datasource url {ds.get('url')} is not a compose service")
    home = (services.get("grafana", {}).get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        hp = mounts.host_path("grafana", home)
        p.check(hp and hp.is_file(), where, f"home dashboard {home} is not a mounted file")


def _dockerfile_lines(text):
    """The instructions of a Dockerfile, continuation lines joined, comments and blank lines dropped."""
    return [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def check_dockerfile():
    p = Problems()
    where = rel(paths.DOCKERFILE)
    lines = _dockerfile_lines(paths.DOCKERFILE.read_text())
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    p.check(len(stages) >= 2, where, "must be multi-stage (a build stage and a runtime stage)")
    p.check(any("cargo build" in line and "--release" in line and "--locked" in line for line in lines), where,
            "the build stage must run cargo build --release --locked")
    final = lines[stages[-1]:] if stages else lines
    ignore = paths.DOCKERFILE.with_name(paths.DOCKERFILE.name + ".dockerignore")
    ignored = [line.strip().rstrip("/") for line in ignore.read_text().splitlines()
               if line.strip() and not line.startswith("#")] if ignore.exists() else []
    for line in lines:
        if line.upper().startswith(("COPY ", "ADD ")) and "--from=" not in line:
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            for src in args[:-1]:
                p.check(src == "." or (paths.ROOT / src).exists(), where,
                        f"COPY source {src} does not exist in the repository")
                p.check(src.rstrip("/") not in ignored, where, f"COPY source {src} is excluded by {ignore.name}")
    user = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    p.check(user and user[-1].split(":")[0] not in {"0", "root"}, where, "the runtime stage must set a non-root USER")
    p.check("nonroot" in final[0] or user, where, "runtime user")
    cmd = [line for line in final if line.upper().startswith("CMD ")]
    p.check(cmd and json.loads(cmd[-1][4:]) == ["run"], where, 'the default command must be CMD ["run"]')
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    p.check(entry and json.loads(entry[-1][11:])[0].endswith("/score-worker"), where,
            "ENTRYPOINT must be the score-worker binary")
    p.check(any(line.upper().startswith("EXPOSE ") and "9102" in line for line in final), where, "EXPOSE 9102")
    return p.done(f"{len(stages)} stages, COPY sources exist, non-root user, default command run")
