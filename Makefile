# make install | install-launchers | run | test | test-fast | lint | bench      (make run ARGS='dataset=cmnist severity=4')
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
ARGS ?=

.PHONY: install install-launchers run test test-fast lint format bench clean

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

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
