# The two commands a new user runs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch's CPU build first, pinned, so that the torch extra never pulls a CUDA build from the registry
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,torch,onnx,s3,gcs,azure]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/naiad serve --model-repository examples/models

lint: $(STAMP)
	$(BIN)/ruff check naiad tests examples bench deploy
	$(BIN)/ruff format --check naiad tests examples bench deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

# The end-to-end suites again with every server's HTTP and gRPC in two front-end processes; left out are those that
# test no front end (tools, stores, frameworks, environments, instance processes) and the front-end processes' own.
FRONTEND_PASS := tests/e2e $(addprefix --ignore=tests/e2e/test_,push.py walkthroughs.py cloud_repositories.py \
	export.py model_environments.py check.py s3_repository.py torchscript.py onnx_runtime.py instance_processes.py \
	frontend_processes.py)

test: lint
	$(BIN)/python -m pytest
	NAIAD_TEST_FRONTEND_PROCESSES=2 $(BIN)/python -m pytest $(FRONTEND_PASS)

format: $(STAMP)
	$(BIN)/ruff check --fix naiad tests examples bench deploy
	$(BIN)/ruff format naiad tests examples bench deploy

bench: $(STAMP)
	$(BIN)/python bench/http_json.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
