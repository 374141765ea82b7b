# The developer's and CI's interface to payauth. `make run` and `make test` work on a
# fresh Debian machine: they create .venv, install the package (compiling protos/ and
# core_ext/) and install redis-server from Debian packages when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard protos/payauth/v1/*.proto) $(wildcard core_ext/*.pyx)

.PHONY: run test lint bench bench-loyalty bench-redis bench-grpc bench-pipeline bench-core compile debug clean system-deps

$(STAMP): $(SOURCES) | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# redis-server (and redis-cli, for the cluster tests), the OpenSSL headers the keyed
# hash builds against and RE2 (CEL's regular expressions), from Debian packages when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	[ -f /usr/include/openssl/hmac.h ] || missing="$$missing libssl-dev"; \
	[ -f /usr/include/re2/re2.h ] || missing="$$missing libre2-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

## run: start the server on its embedded Redis with the demo data set
run: $(STAMP)
	$(VENV)/bin/payauth serve --demo

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

## test: the whole test suite (real redis-server, real gRPC server and clients)
test: $(STAMP) node_modules/.installed
	$(PY) -m pytest -q

## lint: ruff on the Python sources, buf lint on the protos
lint: $(STAMP) node_modules/.installed
	$(VENV)/bin/ruff check .
	npx buf lint

## bench: the end-to-end benchmark (payauth vs an empty handler, open loop); results in
## benchmarks/results/ (BENCH_ARGS=--quick for a one-minute smoke run)
bench: $(VENV)/.bench-installed
	$(PY) -m benchmarks.e2e $(BENCH_ARGS)

## bench-loyalty: what a loyalty program (20 earning rules, 5 challenges) costs an Authorize,
## with against without membership in one run, and Loyalty.Earn throughput; results in
## benchmarks/results/loyalty.* (BENCH_LOYALTY_ARGS=--quick for a smoke run)
bench-loyalty: $(VENV)/.bench-installed
	$(PY) -m benchmarks.loyalty $(BENCH_LOYALTY_ARGS)

## bench-redis: one Redis shard's CPU per authorization (read pipeline + commit), alone on
## its core, with and without the AOF; results in benchmarks/results/redis_shard.*
## (BENCH_REDIS_ARGS=--quick for a smoke run)
bench-redis: $(VENV)/.bench-installed
	$(PY) -m benchmarks.redis_shard $(BENCH_REDIS_ARGS)

## bench-grpc: an empty grpc.aio handler's CPU and context switches per call, under gRPC's
## default core settings and payauth's (GRPC_ENVIRONMENT); results in benchmarks/results/grpc_stack.*
## (BENCH_GRPC_ARGS=--quick for a smoke run)
bench-grpc: $(VENV)/.bench-installed
	$(PY) -m benchmarks.grpc_stack $(BENCH_GRPC_ARGS)

## bench-pipeline: the worker's Authorize pipeline without gRPC, driven in-process against the
## embedded Redis: CPU per decision by authorizations in flight; results in
## benchmarks/results/pipeline.* (BENCH_PIPELINE_ARGS=--quick for a smoke run,
## --ab-pythonpath DIR for another server code beside the checkout's)
bench-pipeline: $(VENV)/.bench-installed
	$(PY) -m benchmarks.pipeline $(BENCH_PIPELINE_ARGS)

# The bench extras (hdrhistogram, matplotlib), once; the test extras carry the build
# requirements, so no build isolation is needed.
$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e '.[bench]'
	touch $@

## bench-core: the decision core (50 rules + 200 trees) against LightGBM, XGBoost, lleaves,
## tl2cgen, onnxruntime, zen-engine and the CEL runtimes; results in benchmarks/results/core.*
## (BENCH_CORE_ARGS=--quick for a smoke run)
bench-core: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e '.[bench-core]'
	$(PY) -m benchmarks.core $(BENCH_CORE_ARGS)

## compile: rebuild protos and the Cython core in place
compile: $(STAMP)
	PAYAUTH_CYTHON_ALWAYS=1 $(PY) -m pip install -q --no-build-isolation -e .

## debug: rebuild the Cython core with line tracing and bounds checks
debug: $(STAMP)
	PAYAUTH_CYTHON_ALWAYS=1 PAYAUTH_CYTHON_DEBUG=1 $(PY) -m pip install -q --no-build-isolation -e .

clean:
	rm -rf build dist *.egg-info $(VENV) node_modules
	find protos -name '*_pb2*.py*' -delete
	rm -f protos/payauth/v1/__init__.py core_ext/*.c core_ext/*.html core_ext/*.so
