# Set-up in two commands on a fresh machine (Python >= 3.10 and pip reaching the package registry):
#   make demo   # creates .venv, installs ditlab, trains a small model on the embedded sample (CPU, offline)
#   make test   # creates .venv if needed and runs the test suite
#
# TORCH_SPEC picks the PyTorch build pip installs into .venv. The default is the CPU build that the
# demo and tests need; on a GPU machine use e.g. `make install TORCH_SPEC=torch` (CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin

# The Triton kernels' logic on a CPU: the same kernels through Triton's interpreter (tests/models/kernels).
# Triton stays out of .venv's own packages (a CUDA build of torch pins its own Triton); it goes to a folder
# of its own, on the path for this target only.
TRITON_SPEC ?= triton==3.6.0
TRITON_DIR = $(VENV)/triton-interpreter

.PHONY: install demo test test-kernels clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	rm -rf runs/demo
	$(BIN)/ditlab train configs/demo.yaml
	$(BIN)/ditlab sample runs/demo --num 100 --device cpu --out runs/demo/samples.npz --grid runs/demo/samples.png --grid-num 100
	$(BIN)/ditlab report runs/demo --grid runs/demo/samples.png
	@echo "demo done: see runs/demo/report.md and runs/demo/samples.png"

test: $(BIN)/.installed
	$(BIN)/python -m pytest

$(TRITON_DIR)/.installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --target $(TRITON_DIR) "$(TRITON_SPEC)"
	touch $@

test-kernels: $(TRITON_DIR)/.installed
	TRITON_INTERPRET=1 PYTHONPATH=$(TRITON_DIR) $(BIN)/python -m pytest tests/models/kernels

clean:
	rm -rf $(VENV) runs .pytest_cache
