# Each target creates .venv when missing. CI sets TORCH to the local CPU wheel.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint bench gpu-check clean

$(BIN)/ppdgm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/ppdgm

demo: $(BIN)/ppdgm
	$(BIN)/ppdgm demo --out runs/demo

test: $(BIN)/ppdgm
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/ppdgm
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/ppdgm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BIN)/ppdgm
	$(BIN)/python bench/step_time.py --gan-batch-sizes 64 256
	$(BIN)/python bench/evaluate_is.py --images 500
	$(BIN)/python bench/ddp_scaling.py --batch-size 500 --steps 60
	$(BIN)/python bench/data_pipeline.py

# on a machine with a CUDA GPU, in one short loan: the GPU tests and benchmarks as one script, one table
# (written to runs/gpu-check/); DATA_DIR: a folder holding binarized_mnist.npz (random binary data without)
DATA_DIR ?=
gpu-check: $(BIN)/ppdgm
	$(BIN)/python bench/gpu_check.py $(if $(DATA_DIR),--data-dir $(DATA_DIR))

clean:
	rm -rf $(VENV) runs build *.egg-info
