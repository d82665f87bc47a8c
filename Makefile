# The two commands: `make demo` (set up, then the whole workflow on the default experiment)
# and `make test`. Everything installs into .venv from the pins in pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= default
PRESET ?= small
BATCH_SIZE ?= 128

NATIVE_BIN := native/build/dlrm_infer

.PHONY: setup native demo test lab clean-experiments

setup: $(STAMP) $(NATIVE_BIN)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --user --name dlrm-tvm --display-name "DLRM TVM (.venv)" >/dev/null
# and inside .venv, where its own JupyterLab looks first (another clone's --user kernel cannot shadow it)
	$(BIN)/python -m ipykernel install --sys-prefix --name dlrm-tvm --display-name "DLRM TVM (.venv)" >/dev/null
	touch $(STAMP)

# The C++ runner, against the TVM wheels installed in .venv.
$(NATIVE_BIN): $(STAMP) native/CMakeLists.txt $(wildcard native/src/*)
	cmake -S native -B native/build -DPython_EXECUTABLE=$(abspath $(BIN)/python) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build native/build -j >/dev/null
	@touch $@  # a no-op rebuild leaves it older than the stamp: without this, every make would run cmake again

native: $(NATIVE_BIN)

demo: setup
	$(BIN)/dlrm demo --experiment $(EXPERIMENT) --preset $(PRESET) --batch-size $(BATCH_SIZE)

test: setup
	$(BIN)/python -m pytest -q

# JupyterLab on the notebooks, kernels over CurveZMQ; prints the URL to open (no browser without a display).
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks --KernelManager.transport_encryption=auto \
		$(if $(DISPLAY),,--no-browser) $(if $(filter 0,$(shell id -u)),--allow-root)

clean-experiments:
	rm -rf experiments
