# One target per habit: make install | test | lint | format | demo | bench | clean
# Extra pytest arguments: make test PYTEST_ARGS="-k contract -x"

# `uv` if it is on PATH, else the copy pip installed as a module. Recursive (=) so that it is looked
# up again after `make install` has put it there.
UV = $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)
# Runs a command with MONGODB_URI set, starting a throwaway SecantusDB server unless it is set already.
WITH_SERVER = $(UV) run python scripts/test_server.py run --
PYTEST_ARGS ?=

.PHONY: install test lint format demo bench clean

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install uv
	$(UV) sync

test: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(WITH_SERVER) python -m pytest $(PYTEST_ARGS)

lint:
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy src

format:
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

demo:
	$(UV) run python examples/demo.py

bench:
	$(WITH_SERVER) python -m benchmarks

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
