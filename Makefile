# Set-up and entry points. Python >= 3.11 is the only thing assumed on the machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch: found locally when a wheel is on disk, else from PyTorch's CPU index,
# never the multi-GB CUDA build from PyPI.
TORCH  := torch==2.13.0+cpu

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" || $(PIP) install -q "$(TORCH)" \
	    --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
	$(PIP) install -q -e ".[dev,hpc]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/pairsr demo --out demo-output --overwrite

test: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(PY) -m pytest -q

# Quick versions of every benchmark (minutes); run a script without --quick for the full size.
bench: setup
	$(PY) benchmarks/bench_lbnlm.py --quick
	$(PY) benchmarks/bench_register.py --builtin 3 --real-seeds 1 --repeat 2
	$(PY) benchmarks/bench_tiles.py --quick
	$(PY) benchmarks/bench_networks.py --quick
	$(PY) benchmarks/robustness.py --quick
	$(PY) benchmarks/bench_plan.py --fields 2 --random 3

clean:
	rm -rf $(VENV) demo-output .pytest_cache
