# Quick start: `make demo` (the synthetic experiment) and `make test`.
# Each creates .venv with the pinned requirements when missing or outdated.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: venv
	$(BIN)/snakemake --cores all
	@cat results/demo/base/summary.txt results/demo/base/trak/enrichment.txt
	@echo "summary: results/demo/base/summary.{txt,json,png}; attribution: results/demo/base/trak/"

test: venv
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf results logs .snakemake
