# Two entry points, both doing their own installing (CPU torch only: see constraints.txt).
PY ?= python3
PIP_INSTALL = $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install install-dev demo test lint bench demo-models

install:
	$(PIP_INSTALL) -e .

install-dev:
	$(PIP_INSTALL) -e ".[dev,bench]"
	bash scripts/install_chromium.sh

demo: install
	attrilens demo --out demo-out

lint:
	ruff check --no-cache .

test: install-dev lint
	$(PY) -m pytest -q

bench: install-dev
	attrilens bench context --out bench-out
	attrilens bench training --out bench-out
	attrilens bench inspect --out bench-out

# Retrain the shipped demo models from scratch (slow: see docs/benchmarks.md for the time it took).
demo-models: install
	$(PY) -m attrilens.demo.build --out runs/demo-models
