# Two commands do all the set-up: `make demo` and `make test`. Both create .venv from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench-env clean

$(STAMP): requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/landscope demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

# ---- Benchmarks. The peer tools (PyHessian, curvlinops, hessian-eigenthings) live ONLY in
# benchmarks/.venv-peers, never among landscope's dependencies. torch==2.13.0 is repeated in the
# same pip command as the peers (benchmarks/requirements-peers.txt): otherwise a dependency chain
# (curvlinops -> backpack -> torchvision) replaces it with another torch build.
PEERS       := benchmarks/.venv-peers
PEERS_STAMP := $(PEERS)/.installed
BENCH_ENV   := OMP_WAIT_POLICY=PASSIVE MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1000000000
BENCH_ARGS  ?=
DOCTOR_ARGS ?=

.PHONY: bench bench-env

$(PEERS_STAMP): benchmarks/requirements-peers.txt pyproject.toml
	$(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet -r benchmarks/requirements-peers.txt
	$(PEERS)/bin/pip install --quiet --no-deps -e .
	$(PEERS)/bin/python -c "import sys, torch; v = torch.__version__; print('peer env: torch', v); sys.exit(0 if v.startswith('2.13.0') and torch.version.cuda is None else 'torch was replaced: ' + v)"
	$(PEERS)/bin/python -c "import pyhessian, curvlinops, hessian_eigenthings; print('peer env: peers import')"
	touch $@

bench-env: $(PEERS_STAMP)

# make bench                                  all workloads, 3 runs each (10-20 min), then the
#                                             doctor on the fault suite (a few minutes)
# make bench BENCH_ARGS="--workloads W1,W2 --quick" DOCTOR_ARGS="--seeds 1"
bench: $(PEERS_STAMP)
	$(BENCH_ENV) $(PEERS)/bin/python benchmarks/bench_core.py $(BENCH_ARGS)
	$(PEERS)/bin/python benchmarks/bench_doctor.py $(DOCTOR_ARGS)
