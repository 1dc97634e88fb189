# The two commands of the README.  Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build; pinned in the same pip call as the package so pip never pulls a CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= notebooks,dev,math

.PHONY: demo test lint bench clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

demo: venv
	$(PY) -m bapo.demo

lint: venv
	$(PY) -m ruff check bapo tests bench
	$(PY) -m ruff format --check bapo tests bench

test: venv lint
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbmake notebooks/

bench: venv
	$(PY) bench/bench_loss.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
