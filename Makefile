# reelmill: `make demo` and `make test` set everything up on a fresh machine (Debian/Ubuntu, Python 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
TEST_SEED ?= 20261203
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := ffmpeg libgl1 libglib2.0-0 chromium  # ffmpeg for all video work; the GL and GLib libraries for OpenCV; chromium for the report's browser test

.PHONY: setup demo test lint format bench clean

setup: $(VENV)/.installed

# The system packages install in the background while pip fills the virtualenv (neither needs the other);
# apt's log is shown once it is done, and a failure of either stops here.
$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	@set -e; apt_log=$$(mktemp); \
	( dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES)) ) >$$apt_log 2>&1 & apt=$$!; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	echo "$(BIN)/python -m pip install -q --upgrade pip"; $(BIN)/python -m pip install -q --upgrade pip; \
	echo "$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'"; \
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'; \
	if wait $$apt; then cat $$apt_log; rm -f $$apt_log; \
	else cat $$apt_log; echo "make setup: installing $(APT_PACKAGES) failed" >&2; exit 1; fi
	@touch $@

demo: setup
	$(BIN)/reelmill demo --output $(DEMO_OUT)

test: setup
	@echo "make test: the suite in random order (pytest-randomly), seed $(TEST_SEED); make test TEST_SEED=N for another"
	$(BIN)/pytest -q -p randomly --randomly-seed=$(TEST_SEED)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/curate_vs_peer.py

clean:
	rm -rf $(DEMO_OUT) bench_out .pytest_cache
