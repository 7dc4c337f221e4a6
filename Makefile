# Everyday commands. The first use builds .venv from the project's own files.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# GPU=1: the CUDA builds of all three frameworks (`make venv GPU=1`, docs/gpu.md). A venv built so
# remembers it (.venv/.gpu), so a later `make test` never installs the CPU TensorFlow over it.
GPU    ?= $(shell cat $(VENV)/.gpu 2>/dev/null)
ifeq ($(GPU),1)
EXTRAS ?= torch,tensorflow-gpu,jax-gpu,ray,storage,dev
LOCKS  := -c requirements.lock -c requirements-gpu.lock
STAMP  := $(VENV)/.installed-gpu
else
EXTRAS ?= torch,tensorflow,jax,ray,storage,dev
LOCKS  := -c requirements.lock
STAMP  := $(VENV)/.installed-stamp
endif

.PHONY: venv browser quick run sample-results sample-results-gpu test test-fast bench bench-fidelity bench-coverage bench-power bench-scale bench-au gpu-smoke lint format clean

$(STAMP): pyproject.toml requirements.lock requirements-gpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/pip uninstall --quiet --yes tensorflow-cpu 2>/dev/null || true  # both install the module tensorflow
	echo 1 > $(VENV)/.gpu
endif
	$(BIN)/pip install --quiet $(LOCKS) -e '.[$(EXTRAS)]'
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

quick: venv browser  ## the main job: every framework and model, small, on CPU (browser: RESULTS.md's chart images)
	$(BIN)/python -m mlbench run configs/quick.yaml

run: venv  ## CONFIG=configs/benchmark_config.yaml ARGS=--resume
	$(BIN)/python -m mlbench run $(or $(CONFIG),configs/benchmark_config.yaml) $(ARGS)

# docs/results/: RESULTS.md and charts of a real run of the default suite on this machine, the command,
# date and commit on top; nothing in it edited by hand (report.html stays in the run folder: 4 MB of
# inlined plotly.js is no document). ARGS=--resume continues an interrupted run.
SAMPLE_RUN := mlbench run configs/benchmark_config.yaml --name sample-cpu
SAMPLE_FILES := results.parquet results.csv epochs.parquet epochs.csv steps.parquet suite.json environment.json calibration.json parity.json
sample-results: venv browser  ## the CPU sample (24 cells x 5 processes: about 4 hours on 2 cores; ARGS=--resume continues)
	$(BIN)/$(SAMPLE_RUN) $(ARGS)
	$(BIN)/mlbench report --results runs/sample-cpu --output docs/results --command "make sample-results: $(strip $(SAMPLE_RUN) $(ARGS))"
	rm -f docs/results/report.html
	cd runs/sample-cpu && cp $(SAMPLE_FILES) $(CURDIR)/docs/results/  # the rows behind every figure: mlbench report --results docs/results/results.parquet

SAMPLE_GPU_RUN := mlbench run configs/benchmark_config.yaml --devices cuda:0 --name sample-gpu
sample-results-gpu: venv browser  ## the same suite on the first GPU, into docs/results/gpu/
	$(BIN)/$(SAMPLE_GPU_RUN) $(ARGS)
	$(BIN)/mlbench report --results runs/sample-gpu --output docs/results/gpu --command "make sample-results-gpu: $(strip $(SAMPLE_GPU_RUN) $(ARGS))"
	rm -f docs/results/gpu/report.html
	cd runs/sample-gpu && cp $(SAMPLE_FILES) $(CURDIR)/docs/results/gpu/

# Debian's Chromium for the report's browser test and RESULTS.md's chart images (root or sudo needed;
# without it that test skips and RESULTS.md says, in place of each image, why there is none)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "warning: could not install chromium; the report's browser test will be skipped and RESULTS.md will say why it has no chart images"; }

# two parts: two pytest workers share the machine (tests sharing a real run on one of them), then the
# tests that time cells or measure other load run alone (`serial`); both parts always run. The second
# collects only the files that mark tests serial (tests/conftest.py fails a serial test found elsewhere)
SERIAL_FILES = $(shell grep -l "mark.serial" tests/test_*.py)
test: venv browser
	@$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not serial" --durations=15; a=$$?; \
	$(BIN)/python -m pytest -q -p no:xdist -m serial --durations=5 $(SERIAL_FILES); b=$$?; \
	[ $$a -eq 0 ] && [ $$b -eq 0 ]

test-fast: venv  ## unit tests only
	$(BIN)/python -m pytest -q -m "not e2e"

bench: bench-fidelity bench-coverage bench-power bench-scale bench-au  ## the five below

bench-fidelity: venv  ## mlbench vs hand-written loops per framework and model (about 30 minutes at 3 rounds on 2 cores)
	$(BIN)/python -m bench.fidelity $(ARGS)

bench-coverage: venv  ## do the printed intervals cover a rerun? (about 10 minutes: 4 rounds of 4 cells x 5 processes)
	$(BIN)/python -m bench.coverage $(COVERAGE_ARGS)

bench-power: venv  ## how often the verdict rule calls a planted 1.3x, and twins (seconds: a simulation)
	$(BIN)/python -m bench.power

bench-scale: venv  ## the orchestrator at 100, 1,000 and 10,000 instant cells (SCALE_ARGS: e.g. --sizes 100 1000)
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

bench-au: venv  ## how far a rerun moves AU: the floor a single run's AU pass or fail needs (about 10 minutes)
	$(BIN)/python -m bench.au_floor $(AU_ARGS)

# PYTHON=python3 on the command line: that interpreter and the frameworks it has, no venv built
ifeq ($(origin PYTHON),command line)
SMOKE_PY := $(PYTHON)
SMOKE_DEPS :=
else
SMOKE_PY := $(BIN)/python
SMOKE_DEPS := venv
endif

gpu-smoke: $(SMOKE_DEPS)  ## on an NVIDIA GPU: the whole GPU path in minutes (without a GPU: says so, exits 0)
	PYTHONPATH=$(CURDIR) $(SMOKE_PY) -m bench.gpu_smoke

lint: venv
	$(BIN)/ruff check mlbench workers tests bench
	$(BIN)/ruff format --check mlbench workers tests bench

format: venv
	$(BIN)/ruff format mlbench workers tests bench
	$(BIN)/ruff check --fix mlbench workers tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
