# The two commands of the README: `make demo` (set up, run the demo, print the report path) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean-demo

# pyproject.toml lists the dependencies, constraints.txt pins the versions tested together.
$(BIN)/.installed: constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[torch,slurm,test]"
	touch $@

demo/samples.tsv: $(BIN)/.installed
	$(BIN)/snakescope demo-data --out demo

demo: $(BIN)/.installed demo/samples.tsv
	$(BIN)/snakemake --configfile config/demo.yaml

test: lint
	$(BIN)/python -m pytest -ra

# The Snakemake workflow catalog's checks (`snakemake --lint` at the root, as its generator runs it, and on the
# committed test data with `-d .test`; snakefmt) and the package's layering (import-linter's
# contracts in pyproject.toml: no cycles, no import upwards, no stage importing another).
lint: $(BIN)/.installed
	$(BIN)/snakemake -d .test --lint
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/lint-imports

# Every bench that needs nothing but this checkout (watch_phase.py compares with another one: --base DIR).
bench: $(BIN)/.installed
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/inference_throughput.py
	$(BIN)/python bench/review_throughput.py
	$(BIN)/python bench/workflow_vs_loop.py
	$(BIN)/python bench/workflow_vs_loop.py --field-px 1024 --images 100
	$(BIN)/python bench/dryrun_scale.py
	$(BIN)/python bench/refinement_f1.py
	$(BIN)/python bench/report_scale.py
	$(BIN)/python bench/stage_cores.py
	$(BIN)/python bench/acquisition_latency.py
	$(BIN)/python bench/large_image.py

clean-demo:
	rm -rf demo results/demo
