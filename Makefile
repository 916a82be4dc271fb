# Two entry points for a new user (see README.md):
#   make main   creates .venv, installs jaxmouse (no test extras), runs the main job on the
#               embedded default
#   make test   creates .venv, installs jaxmouse with its test extras (pytest, pytest-xdist,
#               hypothesis and PyTorch, the tests' reference), runs the test suite
PYTHON ?= python3
VENV ?= .venv
OUT ?= runs/quick
# Test processes (pytest-xdist), each taking whole files so that a module's fixtures are built once.
TEST_WORKERS ?= 2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: main test install install-test
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

main: $(VENV)/.installed
	$(VENV)/bin/jaxmouse run cadena2019 --config quick --out $(OUT)

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -m "not network" -q -n $(TEST_WORKERS) --dist loadfile
