# Every target bootstraps its own virtualenv, so a fresh clone needs only Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test chaos lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files re-run the install whenever the package metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The test extra holds llama-cpp-python, which builds llama.cpp from source unless pip's
# wheel cache has it: built for any x86-64 (no -march=native), so a cached wheel runs on
# every machine of the kind.
$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/tether demo

# The status page's browser test drives Debian's chromium through chromium-driver.
# The suite waits on real processes and sockets far more than it computes: four workers on
# two cores halve its wall time (each test has its own ports, folders and databases).
test: $(VENV)/.installed-test
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver \
		>/dev/null) || echo "test: could not install chromium; the status page test skips"
	$(BIN)/ruff check tether tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 4
	TETHER_CHAOS_S=60 $(BIN)/pytest tests/chaos -m chaos -p no:cacheprovider

# The chaos test (tests/chaos/README.md): a real cluster on the machine's PostgreSQL and a
# redis-server of its own, under a fault schedule of TETHER_CHAOS_S seconds per variant
# (two runs, one after the other: each is a whole cluster on these 2 cores). `make test`
# runs it for 60 s per variant, after the suite; this target for longer, with its report.
TETHER_CHAOS_S ?= 300
chaos: $(VENV)/.installed-test
	TETHER_CHAOS_S=$(TETHER_CHAOS_S) $(BIN)/pytest tests/chaos -m chaos -p no:cacheprovider -s

$(VENV)/.installed-bench: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed

# Benchmarks, not tests: a table on stdout, bench/results/*.json, docs/performance-latency.png.
# wrk comes from the system packages; LiteLLM's arm runs when `litellm` is installed
# (pip install 'litellm[proxy]' into .venv). The cluster benches use the machine's PostgreSQL
# and Redis (a database and a db number of their own), and say so when either is absent.
bench: $(VENV)/.installed-bench
	@command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null)) || \
		{ echo "bench: install wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python -m bench.run all
	$(BIN)/python -m bench.report

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tether tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info
