# latent-lens: `make train` and `make test` work on a fresh clone with nothing installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install data train test test-full lint bench bench-gpu gpu-check clean

install: $(STAMP) data

# the project with its dev extra, then pytorch-grad-cam (the tests' CAM oracle) without its opencv-python,
# which needs libGL (60 MB): opencv-python-headless (the same cv2, a main dependency) and the dev extra's ttach instead,
# and its other dependencies are ours already
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile --no-deps 'grad-cam>=1.5,<1.6'
	@# the bytecode, on every core (pip compiles one file at a time); a few files of torch's own tests do not compile
	@$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	@touch $(STAMP)

# Debian's FashionMNIST (real data, offline); installed when running as root, else the
# datamodule searches data.root and the official download.
data:
	@if [ ! -d $(FASHION_DIR) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } ; \
	  else echo "note: $(FASHION_DIR) missing and not root: install 'dataset-fashion-mnist' or pass data.root=..."; fi; \
	fi

train: install
	$(PY) -m src.train $(ARGS)

# the whole behavioural suite but the tests marked slow (< 6 min with the install on a quiet 2-core
# machine), one worker per core, a test file per worker (its module fixtures are built once);
# the 15 slowest tests are listed at the end so a slow newcomer shows
test: install
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider -n auto --dist loadfile --durations=15

test-full: install
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# every bench/ script that runs on its own; gpu.py is `make bench-gpu`, gpu_check.py `make gpu-check`, path_mask_fast.py and
# morph_speed.py need trained checkpoints (their docstrings say how to run them)
bench: install
	@for b in bench/*.py; do case $$b in bench/common.py|bench/gpu.py|bench/gpu_check.py|bench/path_mask_fast.py|bench/morph_speed.py) continue;; esac; \
	  echo "# $$b"; $(PY) $$b || exit 1; done

bench-gpu: install
	$(PY) bench/gpu.py --device cuda

# the GPU acceptance run (bench/gpu_check.py): one pass/fail table; its --device cpu form is in test-full
gpu-check: install
	$(PY) bench/gpu_check.py --device cuda

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
