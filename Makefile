# The README's two commands: `make reproduce` (the main job) and `make test`.
# Each creates its own virtual environment in .venv (override with VENV=...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipkit-installed

.PHONY: venv test reproduce lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Two processes: most tests use one core (torch on one thread, tests/conftest.py), so two
# halve the wall time on two cores; `$(PY) -m pytest` alone runs the suite serially.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

reproduce: $(STAMP)
	$(PY) -m clipkit reproduce

lint: $(STAMP)
	$(PY) -m ruff check clipkit tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
