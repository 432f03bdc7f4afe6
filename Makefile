# The two entry points of the README. `install` puts the CPU build of torch first where there is
# no CUDA (an unpinned torch requirement would pull a multi-GB CUDA build) with the triton release whose
# interpreter the suite runs (with CUDA, torch brings its own), then the package.
# `test` runs the suite twice: here (the newest transformers) and in .venv-tf4 with transformers 4.x,
# which remote-code (trust_remote_code) LLaDA and Dream models need; the kernel-only tests (Triton's
# interpreter, no transformers) run once.
PYTHON ?= python3
TORCH_CPU ?= torch==2.13.0
TRITON_CPU ?= triton==3.8.0
TF4 ?= 4.57.6
TF4_VENV ?= .venv-tf4
TF4_STAMP := $(TF4_VENV)/.built-transformers-$(TF4)-$(subst ==,-,$(TORCH_CPU))-$(subst ==,-,$(TRITON_CPU))
KERNEL_ONLY_TESTS := $(wildcard tests/test_ops_*.py)

.PHONY: install demo test test-tf4 lint

install:
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "CUDA found: torch comes from install_requires"; \
	 else $(PYTHON) -m pip install -q "$(TORCH_CPU)" "$(TRITON_CPU)"; fi
	$(PYTHON) -m pip install -q -e ".[dev]"

demo: install
	$(PYTHON) experiments/run.py

$(TF4_STAMP): setup.py
	@if [ ! -f $@ ]; then rm -rf $(TF4_VENV) && $(PYTHON) -m venv $(TF4_VENV); fi
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "CUDA found: torch comes from install_requires"; \
	 else $(TF4_VENV)/bin/python -m pip install -q "$(TORCH_CPU)" "$(TRITON_CPU)"; fi
	echo "transformers==$(TF4)" > $(TF4_VENV)/constraints.txt
	$(TF4_VENV)/bin/python -m pip install -q -c $(TF4_VENV)/constraints.txt -e ".[dev]"
	$(TF4_VENV)/bin/python -c "import transformers as t; assert t.__version__ == '$(TF4)', t.__version__"
	touch $@

test-tf4: $(TF4_STAMP)
	$(TF4_VENV)/bin/python -m pytest -q tests $(addprefix --ignore=,$(KERNEL_ONLY_TESTS))

test: install $(TF4_STAMP)
	$(PYTHON) -m pytest -q tests
	$(TF4_VENV)/bin/python -m pytest -q tests $(addprefix --ignore=,$(KERNEL_ONLY_TESTS))
	$(PYTHON) -m ruff check --no-cache .
