# Quick start: `make demo` runs the embedded default, `make test` runs the test suite.
# Both create .venv in the repository and install what they need into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
EXTRAS ?= dev,llm,encoder,diffusion

.PHONY: demo test venv bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch pinned first, so nothing later pulls a CUDA build (see README for GPUs).
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/distill run recipes/quickstart.yaml

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
