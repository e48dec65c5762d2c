"""`compose` and `dockerfile`: each passes on the repository's files and fails on a broken copy."""
import unittest

from check_deploy.docker import check_compose, check_dockerfile

from .support import CheckTest

COMPOSE = "deploy/docker-compose.yml"
DOCKERFILE = "deploy/Dockerfile"


class ComposeTest(CheckTest):
    def test_real_compose_passes(self):
        self.assertPasses(check_compose)

    def test_worker_not_running_run_fails(self):
        self.edit(COMPOSE, 'command: ["run"]', 'command: ["serve"]')
        self.assertFailsWith("service worker must run `run`", check_compose)

    def test_missing_bind_mount_source_fails(self):
        self.edit(COMPOSE, "- ./grafana/dashboards:", "- ./grafana/boards:")
        self.assertFailsWith("bind mount source ./grafana/boards does not exist", check_compose)

    def test_short_stop_grace_period_fails(self):
        self.edit(COMPOSE, "stop_grace_period: 45s", "stop_grace_period: 10s")
        self.assertFailsWith("stop_grace_period must exceed shutdown.timeout", check_compose)

    def test_healthcheck_with_a_shell_fails(self):
        self.edit(COMPOSE, 'test: ["CMD", "/usr/local/bin/score-worker", "health"]',
                  'test: ["CMD-SHELL", "curl -f localhost:9102/readyz"]')
        self.assertFailsWith("worker healthcheck must be", check_compose)

    def test_prometheus_config_not_mounted_fails(self):
        self.edit(COMPOSE, "--config.file=/etc/prometheus/prometheus-compose.yml",
                  "--config.file=/etc/prom/prometheus-compose.yml")
        self.assertFailsWith("Prometheus config /etc/prom/prometheus-compose.yml is not a mounted file", check_compose)

    def test_datasource_outside_compose_fails(self):
        self.edit("deploy/grafana/provisioning/datasources/prometheus.yml", "url: http://prometheus:9090",
                  "url: http://prom:9090")
        self.assertFailsWith("datasource url http://prom:9090 is not a compose service", check_compose)


class DockerfileTest(CheckTest):
    def test_real_dockerfile_passes(self):
        self.assertPasses(check_dockerfile)

    def test_root_user_fails(self):
        self.edit(DOCKERFILE, "USER 65532:65532", "USER root")
        self.assertFailsWith("the runtime stage must set a non-root USER", check_dockerfile)

    def test_other_default_command_fails(self):
        self.edit(DOCKERFILE, 'CMD ["run"]', 'CMD ["check"]')
        self.assertFailsWith('the default command must be CMD ["run"]', check_dockerfile)

    def test_missing_copy_source_fails(self):
        self.edit(DOCKERFILE, "COPY schema/ ", "COPY schemas/ ")
        self.assertFailsWith("COPY source schemas/ does not exist in the repository", check_dockerfile)

    def test_copy_source_excluded_by_dockerignore_fails(self):
        (self.root / "deploy/Dockerfile.dockerignore").write_text(
            (self.root / "deploy/Dockerfile.dockerignore").read_text() + "\nconfig/\n")
        self.assertFailsWith("COPY source config/ is excluded by Dockerfile.dockerignore", check_dockerfile)

    def test_single_stage_fails(self):
        self.edit(DOCKERFILE, "COPY --from=builder /out/score-worker", "COPY /out/score-worker")
        self.edit(DOCKERFILE, "FROM rust:", "# FROM rust:")
        self.assertFailsWith("must be multi-stage", check_dockerfile)


if __name__ == "__main__":
    unittest.main()
