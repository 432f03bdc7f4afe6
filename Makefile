# The two entry points of the README. `install` puts the CPU build of torch first where there is
# no CUDA (an unpinned torch requirement would pull a multi-GB CUDA build), then the package.
PYTHON ?= python3
TORCH_CPU ?= torch==2.13.0

.PHONY: install demo test lint

install:
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "CUDA found: torch comes from install_requires"; \
	 else $(PYTHON) -m pip install -q "$(TORCH_CPU)"; fi
	$(PYTHON) -m pip install -q -e ".[dev]"

demo: install
	$(PYTHON) experiments/run.py

test: install
	$(PYTHON) -m pytest -q tests
	$(PYTHON) -m ruff check .
