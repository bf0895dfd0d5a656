# pg2es: the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (Postgres from Debian, Elasticsearch/OpenSearch from Maven
# Central, newman from npm) and start the local stack on 127.0.0.1.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

SHARED      ?= $(CURDIR)/../shared
ES_URL      ?= http://127.0.0.1:9200
OS_URL      ?= http://127.0.0.1:9201
PG_ADMIN    ?= postgres://app:123qwe@127.0.0.1:5432/postgres
PG_MOVIES   ?= postgres://app:123qwe@127.0.0.1:5432/movies
CARGO       ?= cargo

# Settings for running pg2es against the local stack.
LOCAL_ENV = PG_DSN=$(PG_MOVIES) ES_SCHEMA_FILE=$(SHARED)/fixtures/movies/es_schema.json

.PHONY: help demo test test-faults test-unit test-integration acceptance stack-up stack-down stack-status db build check-tools clean

help:
	@echo "make demo        start the local stack, load the catalog, run one pass of pg2es, show the index"
	@echo "make test        unit + integration tests on the real stack, and the Postman suite on ES and OpenSearch"
	@echo "make test-faults kills, outages and bad bulk items against the real stack (stops services)"
	@echo "make stack-up    start Postgres, Elasticsearch and OpenSearch on 127.0.0.1 (installs what is missing)"
	@echo "make stack-down  stop them (data is kept)"

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs) and retry" >&2; exit 1; }
	@command -v curl >/dev/null && command -v socat >/dev/null || { apt-get update -qq && apt-get install -y -qq curl socat; }
	@[ -r $(SHARED)/fixtures/movies/movies_db_dump.sql ] || { echo "make: $(SHARED) not found; set SHARED=path/to/shared" >&2; exit 1; }

stack-up:
	scripts/stack.sh up all

stack-down:
	scripts/stack.sh down all

stack-status:
	scripts/stack.sh status all

# The source catalog: schema + reference dataset in database `movies` (and template `movies_ref` for tests).
db: stack-up
	DUMP_FILE=$(SHARED)/fixtures/movies/movies_db_dump.sql scripts/load-dump.sh movies

build: check-tools
	$(CARGO) build --release --locked

demo: check-tools db build
	@curl -s -o /dev/null -XDELETE $(ES_URL)/movies
	@rm -f state/demo-state.json
	$(LOCAL_ENV) ES_URL=$(ES_URL) ETL_STATE_FILE=state/demo-state.json ./target/release/pg2es run --once
	@scripts/summary.sh $(ES_URL) movies
	@echo
	@echo "The stack is still running: Postgres $(PG_MOVIES), Elasticsearch $(ES_URL), OpenSearch $(OS_URL)."
	@echo "Run pg2es continuously:  $(LOCAL_ENV) ./target/release/pg2es run"
	@echo "Stop the stack:          make stack-down"

test: check-tools db test-unit test-integration acceptance

test-unit:
	$(CARGO) test --locked --lib --bins

test-integration:
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_OS_URL=$(OS_URL) \
		$(CARGO) test --locked --test '*' -- --test-threads=2

# Crashes and outages: these stop and start the shared services, so they run alone, one at a time.
test-faults: check-tools db
	PG2ES_TEST_PG_DSN=$(PG_ADMIN) PG2ES_TEST_ES_URL=$(ES_URL) PG2ES_TEST_OS_URL=$(OS_URL) \
		$(CARGO) test --locked --features fault-tests --test faults -- --test-threads=1 --nocapture

# The course's Postman suite on a fresh `movies` index, on each engine.
acceptance:
	$(CARGO) build --locked
	for url in $(ES_URL) $(OS_URL); do \
		port=$${url##*:}; \
		curl -s -o /dev/null -XDELETE $$url/movies; \
		rm -f state/acceptance-$$port.json; \
		$(LOCAL_ENV) ES_URL=$$url ETL_STATE_FILE=state/acceptance-$$port.json ./target/debug/pg2es run --once; \
		tools/acceptance/run.sh $$url; \
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
