# Two entry points for a new user (see README.md):
#   make main   creates .venv, installs jaxmouse, runs the main job on the embedded default
#   make test   creates .venv, installs jaxmouse with its test extras, runs the test suite
PYTHON ?= python3
VENV ?= .venv
OUT ?= runs/quick

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: main test install
install: $(VENV)/.installed

main: $(VENV)/.installed
	$(VENV)/bin/jaxmouse run cadena2019 --config quick --out $(OUT)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m "not network" -q
