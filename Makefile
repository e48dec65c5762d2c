# score-worker — the menu. `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Local development talks text; production config keeps JSON.
RUN_ENV := SCORE_WORKER__LOG__FORMAT=text SCORE_WORKER__HTTP__LISTEN=127.0.0.1:9102
# A server pair of its own for fault injection (it kills, freezes and restarts them).
CHAOS_ENV := SCORE_WORKER_LOCAL=$(CURDIR)/.local/chaos SCORE_WORKER_NATS_PORT=4322 SCORE_WORKER_NATS_MON_PORT=8322 \
	SCORE_WORKER_CQL_PORT=9142 SCORE_WORKER_STORAGE_PORT=7100
# A second server pair for the security tests: Cassandra with password authentication.
SECURE_ENV := SCORE_WORKER_LOCAL=$(CURDIR)/.local/secure SCORE_WORKER_NATS_PORT=4422 SCORE_WORKER_NATS_MON_PORT=8422 \
	SCORE_WORKER_CQL_PORT=9242 SCORE_WORKER_STORAGE_PORT=7200 SCORE_WORKER_CASSANDRA_AUTH=1

.PHONY: help services services-down run test unit it security chaos soak lint deploy-check metrics-contract sample check bench ci clean

help:
	@echo "make run           start local nats-server + Cassandra, apply the schema, run the worker"
	@echo "make test          same set-up, then lint, unit + integration tests, deploy checks"
	@echo "make sample        publish 1000 sample score updates to the local NATS"
	@echo "make check         score-worker check against the local servers"
	@echo "make lint          cargo fmt --check and clippy -D warnings"
	@echo "make deploy-check  promtool / kubernetes-validate / dashboard checks of deploy/"
	@echo "make chaos         fault-injection suite (also part of make test); make soak: the long version"
	@echo "make bench         end-to-end throughput, CPU/event, peak RSS, latency percentiles (release build)"
	@echo "make services-down stop the local servers"

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down
	$(SECURE_ENV) scripts/services.sh down
	$(CHAOS_ENV) scripts/services.sh down

run: services
	$(CARGO) build --locked
	$(RUN_ENV) target/debug/score-worker migrate
	$(RUN_ENV) target/debug/score-worker run

sample:
	$(RUN_ENV) $(CARGO) run --locked --quiet -- publish-sample --count 1000 --profiles 100

check:
	$(RUN_ENV) $(CARGO) run --locked --quiet -- check

# Figures, not pass/fail: see benches/throughput.rs for the knobs.
bench: services
	$(CARGO) bench --locked --bench throughput

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --lib -- --nocapture

it: services
	$(CARGO) test --locked --test it

# NATS with TLS + user/password or token (a nats-server the tests start), Cassandra with password auth.
security:
	$(SECURE_ENV) scripts/services.sh up
	$(CARGO) test --locked --test security

# Fault injection with the real binary: SIGKILLs, frozen database, NATS restart, replicas, a 100k backlog
# with bounded memory, SIGTERM. One summary line per scenario.
chaos:
	$(CHAOS_ENV) scripts/services.sh up
	$(CARGO) test --locked --test chaos -- --test-threads=1 --nocapture

# Long mode: a 1,000,000-message backlog, 5x the events elsewhere, 30 SIGKILLs.
soak:
	$(CHAOS_ENV) scripts/services.sh up
	SCORE_WORKER_CHAOS_BACKLOG=1000000 SCORE_WORKER_CHAOS_SCALE=5 SCORE_WORKER_CHAOS_KILLS=30 \
		$(CARGO) test --locked --test chaos -- --test-threads=1 --nocapture

deploy-check:
	scripts/check-deploy.sh

# Lints the /metrics text a live worker served during `make it` and checks every metric the
# alert rules and dashboards use is exported.
metrics-contract:
	scripts/check-metrics-contract.sh .local/metrics-sample.txt

test: services lint unit it security chaos metrics-contract deploy-check
	@echo "make test: all checks passed"

ci: test

clean: services-down
	rm -rf .local
