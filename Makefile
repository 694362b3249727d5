# The two quick-start commands: `make demo` and `make test`. Each sets up .venv when missing.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_TRACE ?= examples/mixed-600.csv
DEMO_POLICIES ?= ray-default,dask,ml
PYTEST_ARGS ?=

.PHONY: setup browser demo test test-fast lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ray_sched needs Python >= 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/ray-sched compare $(DEMO_TRACE) --slots 8 --out runs/demo --policies $(DEMO_POLICIES) \
		--fresh --model-dir runs/demo/models

# The report's browser test opens pages in Debian's Chromium (no browser download by a
# test tool): installed here when missing and this is a root Debian machine; otherwise that
# one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's chromium for the report's browser test"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "make: could not install chromium; the browser test will be skipped" >&2; \
	  else echo "make: no chromium (apt-get install chromium); the browser test will be skipped" >&2; fi; }

# pytest exits 5 when a selection (-m/-k) collected no test: said plainly, not a failure.
test: setup browser
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; exit 0; fi; \
	exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check ray_sched tests benchmarks

clean:
	rm -rf runs .pytest_cache
