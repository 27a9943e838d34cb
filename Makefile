# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where the official weights are mirrored locally; without it they are downloaded from their URL.
SHARED ?= ../shared
export EDGESEG_MIRROR ?= $(abspath $(SHARED)/models)

DEMO_IMAGES = $(shell $(BIN)/python -c 'import skimage.data as d, os; print(" ".join(os.path.join(d.data_dir, f) for f in ("astronaut.png", "chelsea.png", "motorcycle_left.png")))')

.PHONY: demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The demo runs the official INT8 files with LiteRT: the on-device core and the photos, no PyTorch.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.all-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[torch,export,plot,video,npu,demo,dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/edgeseg predict $(DEMO_IMAGES) -o demo_out
	@echo "overlays and palette label maps are in demo_out/"

test: $(VENV)/.all-installed
	$(BIN)/python -m pytest

test-fast: $(VENV)/.all-installed
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.all-installed
	$(BIN)/ruff check src tests bench tools

clean:
	rm -rf $(VENV) demo_out .pytest_cache
