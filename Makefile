# One target per habit: make install | test | lint | format | demo | bench | capacity | clean
# Extra pytest arguments: make test PYTEST_ARGS="-k contract -x"
#
# Works as the first command on a machine with only Python 3.11+ and make: `uv` is used from PATH
# or installed inside the project (.tools/, see scripts/bootstrap.py), and everything else goes into
# the project's .venv/. Nothing is installed into the machine's own Python.

PYTHON ?= python3
# The path of uv (from PATH, or installed into .tools/ the first time). Recursive (=): evaluated
# when a recipe uses it, so that `make install` runs before anything needs it.
UV = $(shell $(PYTHON) scripts/bootstrap.py)
# uv uses the Python that runs make, and never downloads one.
export UV_PYTHON_DOWNLOADS = never
export UV_PYTHON ?= $(shell $(PYTHON) -c "import sys; print(sys.executable)")
# Runs a command with MONGODB_URI set, starting a throwaway SecantusDB server unless it is set already.
WITH_SERVER = $(UV) run python scripts/test_server.py run --
PYTEST_ARGS ?=

.PHONY: install test lint format demo bench capacity clean

install:
	@uv="$$($(PYTHON) scripts/bootstrap.py)" && echo "==> uv: $$uv" && \
	 echo "==> installing the project and its development tools into .venv/ (uv sync)" && \
	 "$$uv" sync

test: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy src
	$(WITH_SERVER) python -m pytest $(PYTEST_ARGS)

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy src

format: install
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

demo: install
	$(UV) run python examples/demo.py

bench: install
	$(WITH_SERVER) python -m benchmarks

capacity: install
	$(WITH_SERVER) python -m benchmarks.capacity

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.venv -prune -o -path ./.tools -prune -o -type d -name __pycache__ -exec rm -rf {} +
