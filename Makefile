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

# torch picks AVX-512 or AVX2 kernels by processor, and some bugs live in one set only; the
# training, gradient and tiny end-to-end tests run a second time on the AVX2 kernels that
# CPUs without AVX-512 use (a no-op where AVX2 is already the best the CPU has).
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
AVX2_TESTS := tests/test_models_training.py tests/test_factored.py tests/test_estimators.py \
	tests/test_metagradient.py::test_the_replay_is_the_training_stage_masked_twin \
	tests/test_zoo.py::test_projected_gradients_match_exact_per_example_gradients_projected_by_the_same_map \
	tests/test_zoo.py::test_zero_removal_reproduces_the_base_weights_bit_for_bit \
	tests/test_workflow.py::test_every_concept_member_and_layer_is_probed \
	tests/test_workflow.py::test_trak_scores_for_every_concept_and_layer \
	tests/test_workflow.py::test_validate_writes_every_field_and_predicts_minus_the_sum_of_removed_scores

test: venv test-deps
	$(BIN)/python -m pytest -q tests
	@echo "== again on AVX2 kernels: $(AVX2)"
	$(AVX2) $(BIN)/python -m pytest -q $(AVX2_TESTS)

# Debian's Chromium for the report test (Playwright drives it; no browser download).
# Installed only when running as root; otherwise that test is skipped and says how to enable it.
test-deps:
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

clean:
	rm -rf results logs .snakemake
