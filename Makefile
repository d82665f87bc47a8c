# The two commands: `make demo` (set up, then the whole workflow on the default experiment)
# and `make test`. Everything installs into .venv from the pins in pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= default
PRESET ?= small
BATCH_SIZE ?= 128

.PHONY: setup demo test clean-experiments

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --user --name dlrm-tvm --display-name "DLRM TVM (.venv)" >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/dlrm demo --experiment $(EXPERIMENT) --preset $(PRESET) --batch-size $(BATCH_SIZE)

test: setup
	$(BIN)/python -m pytest -q

clean-experiments:
	rm -rf experiments
