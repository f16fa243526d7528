# lift3d — `make demo` and `make test` work on a fresh clone (they create .venv and install first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/dragon
BATCH_OUT ?= out/batch

.PHONY: install demo test test-deps test-fast serve bench bench-gpu clean k8s batch-demo loadtest playground vendor

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: here it resolves to the local CPU wheel (an unpinned torch pulls CUDA packages).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[serve,test,batch]"
	touch $(STAMP)

# The Khronos glTF-Validator (npm) checks every GLB the tests write.
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

install: $(STAMP) $(NODE_STAMP)

playground: install  ## the API and the web playground in one process (no Ray): http://127.0.0.1:8000/
	$(VENV)/bin/lift3d playground --port 8000

vendor: $(NODE_STAMP)  ## copy three.js and eventsource-parser from node_modules into static/vendor (after changing a pin)
	$(PY) tools/vendor_js.py

demo: install
	time $(VENV)/bin/lift3d generate --image examples/dragon2_rgba.png --out $(DEMO_OUT) --seed 0
	@echo "wrote: $$(ls $(DEMO_OUT))"

batch-demo: install  ## examples/batch.jsonl (prompts and example images) → out/batch; run it twice: the rerun skips
	$(VENV)/bin/lift3d batch --input examples/batch.jsonl --out $(BATCH_OUT) --preset tiny --num-gpus 0 \
		--num-views 4 --num-multiview-steps 4 --num-inference-steps 4 --num-3d-max-steps 60
	@echo "results: $(BATCH_OUT)/results.jsonl"

# Debian's redis-server and chromium: apt-get installs them when missing (as root), else one line says what to install.
test-deps:
	@bash tools/ensure_test_deps.sh

test: test-deps install  ## the whole suite (installs what it needs first: venv, node_modules, redis-server, chromium)
	LIFT3D_REQUIRE_GLTF_VALIDATOR=1 $(PY) -m pytest -q

test-fast: test-deps install  ## the suite without the tests marked slow (each > ~20 s on 2 cores)
	LIFT3D_REQUIRE_GLTF_VALIDATOR=1 $(PY) -m pytest -q -m "not slow"

serve: install  ## the local graph (tiny preset, local storage) on http://127.0.0.1:8000
	@echo "API keys are required. Create one (same database, /tmp/lift3d/lift3d.db) in another shell:"
	@echo "    $(VENV)/bin/lift3d keys create --name me --credits 100"
	@echo "then: curl -H \"Authorization: Bearer sk-...\" localhost:8000/v1/user/balance   (docs/serving.md)"
	$(PY) graph.py serve_config.local.yaml

bench: install
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/reconstruct_shapes.py
	$(PY) benchmarks/bench_hashgrid.py

# Load test: `make serve` must already run in another shell. `make loadtest USERS=50 RUN_TIME=5m` for the long run.
USERS ?= 12
SPAWN_RATE ?= 4
RUN_TIME ?= 60s
LOAD_STAMP := $(VENV)/.load-installed-stamp
$(LOAD_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[load]"
	touch $(LOAD_STAMP)

loadtest: $(LOAD_STAMP)  ## headless Locust mix against `make serve`; report in loadtest/reports/<time>/ (docs/serving.md)
	$(PY) loadtest/run.py --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME)

bench-gpu: install  ## full-size models with random weights on CUDA (see benchmarks/README.md)
	$(PY) benchmarks/bench_gpu.py --json out/bench_gpu.json

k8s: install  ## regenerate k8s/rayservice.yaml's serveConfigV2 from serve_config.yaml
	$(PY) tools/sync_rayservice.py

clean:
	rm -rf out .pytest_cache node_modules
