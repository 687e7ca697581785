# orchestra: every target bootstraps .venv itself, so a fresh clone needs only
# Python 3.11+ and make. ORCHESTRA_DSN (or ORCHESTRA_TEST_DSN for tests) points
# at your PostgreSQL; without it the embedded PostgreSQL (pgserver) is used.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
# Where `make docs` writes the site (build/ is ignored by git).
DOCS_SITE ?= build/site
# The Python of the documentation site, linted by name: ruff would also reformat
# the code blocks of docs/*.md, snippet includes among them.
DOCS_PY := docs/_hooks.py docs/_griffe_rst.py

.PHONY: demo test lint typecheck docs unit integration e2e faults bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestra demo

lint: $(STAMP)
	$(BIN)/ruff check orchestra tests examples benchmarks $(DOCS_PY)
	$(BIN)/ruff format --check orchestra tests examples benchmarks $(DOCS_PY)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q -n $(PYTEST_WORKERS)

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e -q -n $(PYTEST_WORKERS)

# The documentation site (mkdocs.yml), built strictly: a warning, a broken link
# or anchor, or a docstring the reference cannot read fails it. (Not --quiet:
# it hides the warnings from --strict too, and a broken site then passes.)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(DOCS_SITE)

test: lint typecheck docs $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

# The fault battery at full size (thousands of jobs per case, many faults), one
# case at a time; `make test` runs its short version with the rest of tests/.
faults: $(STAMP)
	ORCHESTRA_FAULTS=full $(BIN)/pytest tests/faults -q -n 0

# schemas/schema.sql, the whole current schema for reading, regenerated from
# the migrations (run it after adding one): applied to a throwaway schema on
# ORCHESTRA_DSN, ORCHESTRA_TEST_DSN or the embedded PostgreSQL, then pg_dump'ed.
schema: $(STAMP)
	$(BIN)/python -m orchestra._schema_dump

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
