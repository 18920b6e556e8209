# Two set-up-and-go targets (see README): `make book` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick
# pytest-xdist workers of `make test` (auto: one per core; 0: the tests in this one process)
TEST_WORKERS ?= auto

.PHONY: book test venv bench clean lab

# (ipykernel's install leaves an empty temporary folder behind: made in a folder of our own in .venv,
# removed after)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,dev,multislice,io,lab]"
	t=$$(mktemp -d $(VENV)/ipykernel-install.XXXXXX) && TMPDIR=$$t $(BIN)/python -m ipykernel install --sys-prefix \
		--name python3 --display-name "Python 3 (agglib)" >/dev/null && rm -rf $$t
	touch $(STAMP)

venv: $(STAMP)

## make book: execute every notebook with papermill at $(PROFILE), build the HTML book into _build/html
book: $(STAMP)
	$(BIN)/python book/make_book.py --profile $(PROFILE)

## make test: the whole test suite (unit, property-based, every notebook at the tiny profile, the book),
## whole test modules to each worker (tests/conftest.py: the notebook modules together, the slow ones first)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

## make lab: JupyterLab on the notebooks with the project's kernel ("Python 3 (agglib)")
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

## make bench: the benchmarks (installs the anchors they compare against)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf _build
