# Quick start: `make demo` runs the embedded default, `make test` runs the test suite.
# Both create .venv in the repository and install what they need into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
EXTRAS ?= dev,llm,encoder,diffusion,vision,data

.PHONY: demo test venv bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch and torchvision pinned first as one consistent pair, so nothing later resolves another
	# torch (see README for GPUs). A torch already in the venv is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	@$(PY) -c "import torchvision" 2>/dev/null || { echo "error: .venv has a torch of its own but no torchvision; install the torchvision built for that torch (e.g. pip install torchvision --index-url <the index your torch came from>), then rerun make."; exit 2; }
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/distill run recipes/quickstart.yaml

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
