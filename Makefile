# Quick start: `make demo` (the synthetic experiment) and `make test`.
# Each creates .venv with the pinned requirements and the package (pip install -e .)
# when missing or outdated.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-deps clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	$(BIN)/snakemake --cores all
	@cat results/demo/base/summary.txt results/demo/base/trak/enrichment.txt results/demo/compare/verdicts.txt \
		results/demo/validate/*.txt
	@echo "report: $(CURDIR)/results/demo/report/index.html"

test: venv test-deps
	$(BIN)/python -m pytest -q tests

# Debian's Chromium for the report test (Playwright drives it; no browser download).
# Installed only when running as root; otherwise that test is skipped and says how to enable it.
test-deps:
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

clean:
	rm -rf results logs .snakemake
