# Two commands do all the set-up on a fresh machine:
#   make demo   install, train a small tuning policy, benchmark it on the held-out workloads
#   make test   install, run the test suite (the quick part; CI also runs `make test-cluster`)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-cluster test-all demo lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so that nothing pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not cluster" -q

# Two-node Ray clusters (ray.cluster_utils) that lose a node mid-run: a few minutes.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/rlagent train --spec default --timesteps 3000 --out runs/demo/policy --run-dir runs/demo/run --checkpoint-every 1000
	$(BIN)/rlagent bench --spec default --policy runs/demo/policy --workloads mnist1d-cnn --seeds 2 \
		--methods policy random constant schedulefree --results runs/demo/bench

lint: $(STAMP)
	$(BIN)/ruff check rlagent scripts tests
	$(BIN)/ruff format --check rlagent scripts tests

clean:
	rm -rf $(VENV) runs results
