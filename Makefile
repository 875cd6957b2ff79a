# make install | install-launchers | run | test | test-fast | lint | bench | gpu-check     (make run ARGS='dataset=cmnist severity=4')
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
ARGS ?=

.PHONY: install install-launchers run test test-fast lint format bench gpu-check clean

install: $(STAMP)

# Re-installs only when requirements.txt changes (the torch wheel alone is ~5.5 GB).
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps imagecorruptions-imaug==1.1.5
	touch $(STAMP)

# Optional Hydra launchers: launcher=joblib (parallel trials here), launcher=slurm (a cluster).
LAUNCHERS := hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0
install-launchers: install
	$(PY) -m pip install --disable-pip-version-check -q $(LAUNCHERS)

run: install
	$(PY) run.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# The edit loop (under a minute): unit and in-process tests; no subprocess runs, sweeps or full datasets.
test-fast: install
	$(PY) -m pytest -m "not slow" -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m denetdm.bench $(ARGS)

# The GPU measurements of issue 13 in one go, for a session that is lent a GPU (about 10 minutes on an H200):
# the CUDA tests, the bench's CUDA rows, one Colored MNIST paper run with captured steps, 16 stacked seeds.
GPU_OUT ?= outputs/gpu-check
gpu-check: install
	$(PY) -m pytest -q -x tests/test_captured.py
	$(PY) -m denetdm.bench --device cuda --skip-mnist --cifar-steps 4 --stack-steps 50
	t=$$(date +%s); $(PY) run.py experiment=paper_cmnist captured=true logger=none progress=false \
		hydra.run.dir=$(GPU_OUT)/one && echo "$$(( $$(date +%s) - t )) s: one paper run, captured"
	t=$$(date +%s); $(PY) run.py -m experiment=paper_cmnist 'seed=range(16)' launcher=stacked captured=true \
		logger=none progress=false hydra.sweep.dir=$(GPU_OUT)/stack16 && echo "$$(( $$(date +%s) - t )) s: 16 stacked seeds"

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
