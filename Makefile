# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgecompress-installed
# torch/torchvision first, pinned: this machine carries exactly these wheels on disk,
# and any other pin makes pip download gigabytes.
TORCH  := torch==2.14.1 torchvision==0.29.1

DEMO_MODEL  := models/demo/fmnist_mobilenetv2.pt
DEMO_RECIPE := recipes/demo.yaml
DEMO_OUT    := out/demo

.PHONY: setup sysdeps demo test test-fast clean

setup: sysdeps $(STAMP)

sysdeps:
	@tools/ensure_sysdeps.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --disable-pip-version-check -e '.[dev,bench]'
	@touch $(STAMP)

demo: setup
	$(BIN)/edgecompress compress $(DEMO_MODEL) --recipe $(DEMO_RECIPE) --device host --out $(DEMO_OUT) --force

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) out .pytest_cache
