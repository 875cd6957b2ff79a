# make install | install-launchers | run | test | test-fast | lint | bench | bench-cluster | equiv | gpu-check | gpu-pack |
#      gpu-reproduce | cluster-up | cluster-down     (make run ARGS='dataset=cmnist severity=4')
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
ARGS ?=

.PHONY: install install-launchers run test test-fast lint format bench bench-cluster equiv gpu-check gpu-pack gpu-reproduce \
	cluster-up cluster-down clean

install: $(STAMP)

# Re-installs only when requirements.txt changes (the torch wheel alone is ~5.5 GB).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@# a venv made before the move to Optuna 4 holds these two; left there they would shadow our sampler configs
	$(PY) -m pip uninstall --disable-pip-version-check -q -y hydra-optuna-sweeper imagecorruptions-imaug 2>/dev/null || true
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory $(FROST)
	touch $(STAMP)

# The frost corruption's photographs: the package data of imagecorruptions-imaug (the same files as the reference's
# data/resource/frost*), unpacked from its wheel; the package itself is not installed (it would pull in numba).
FROST := denetdm/data/frost
$(FROST):
	d=$$(mktemp -d) && $(PY) -m pip download --disable-pip-version-check -q --no-deps -d $$d imagecorruptions-imaug==1.1.5 \
		&& $(PY) -m zipfile -e $$d/*.whl $$d/x && rm -rf $(FROST).tmp && cp -r $$d/x/imagecorruptions/frost $(FROST).tmp \
		&& mv $(FROST).tmp $(FROST) && rm -rf $$d

# Optional Hydra launchers: launcher=joblib (parallel trials here), launcher=slurm (a cluster).
LAUNCHERS := hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0
install-launchers: install
	$(PY) -m pip install --disable-pip-version-check -q $(LAUNCHERS)

run: install
	$(PY) run.py $(ARGS)

test: install
	$(PY) -m pytest -n auto $(ARGS)

# The edit loop (under a minute): unit and in-process tests; no subprocess runs, sweeps or full datasets.
test-fast: install
	$(PY) -m pytest -n auto -m "not slow" -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	PYTHONPATH=. $(PY) tests/bench.py $(ARGS)

# Batches against worker jobs on the test cluster (make cluster-up first): wall time and busy fraction (docs/cluster.md)
bench-cluster: install
	$(PY) tests/bench_cluster.py $(ARGS)

# A refactor changes no number: every method, a resumed run, a stack (and Colored MNIST where $DENETDM_DATA has it)
# made here and at BASE, compared file by file (tests/equiv.py). make equiv BASE=<commit>
BASE ?= HEAD
equiv: install
	$(PY) tests/equiv.py $(BASE)

# The GPU measurements of issue 13 in one go, for a session that is lent a GPU (about 10 minutes on an H200):
# the CUDA tests, the bench's CUDA rows, one Colored MNIST paper run with captured steps, 16 stacked seeds.
GPU_OUT ?= outputs/gpu-check
gpu-check: install
	$(PY) -m pytest -q -x tests/test_captured.py
	PYTHONPATH=. $(PY) tests/bench.py --device cuda --skip-mnist --cifar-steps 4 --stack-steps 50
	t=$$(date +%s); $(PY) run.py experiment=paper_cmnist captured=true logger=none progress=false \
		hydra.run.dir=$(GPU_OUT)/one && echo "$$(( $$(date +%s) - t )) s: one paper run, captured"
	t=$$(date +%s); $(PY) run.py -m experiment=paper_cmnist 'seed=range(16)' launcher=stacked captured=true \
		logger=none progress=false hydra.sweep.dir=$(GPU_OUT)/stack16 && echo "$$(( $$(date +%s) - t )) s: 16 stacked seeds"

# The paper cells still unmeasured, on a lent GPU (docs/results.md, "On a GPU"). Here: `make gpu-pack` puts what the
# device machine lacks into .gpu/ (the pure-Python wheels its image has not, CIFAR-10 and MNIST as xz tarballs: 30 MB,
# and the commit the records will name: the copy of the tree there carries the .git of the session's start, so pack
# right before the call).
# There: carry .gpu and run `make gpu-reproduce PY=python3 GPU_OUT=$$OUT`: it unpacks them and runs the steps of
# tests/reproduce.py within BUDGET seconds (ARGS='--steps a,b' for some; ARGS=--tiny tries them at a tiny size);
# the records come back in $$OUT/records.tar.gz.
GPU_PACK := .gpu
WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
BUDGET ?= 520
DENETDM_DATA ?= ../shared/data
gpu-pack: install
	rm -rf $(GPU_PACK) && mkdir -p $(GPU_PACK)/wheels
	$(PY) -m pip wheel --disable-pip-version-check -q --no-deps -w $(GPU_PACK)/wheels $(WHEELS)
	cp -r $(FROST) $(GPU_PACK)/frost
	d=$$(mktemp -d) && (cd $$d && unzip -q "$(abspath $(DENETDM_DATA))/cifar10-jpeg.zip") && tar -C $$d -cf - cifar10 | xz -T0 -6 > $(GPU_PACK)/cifar10.tar.xz && rm -rf $$d
	tar -C "$(DENETDM_DATA)" -cf - MNIST/raw | xz -T0 -6 > $(GPU_PACK)/mnist.tar.xz
	$(PY) -c "from denetdm.provenance import commit; print(commit())" > $(GPU_PACK)/commit
	du -sh $(GPU_PACK)

gpu-reproduce:
	$(PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(GPU_PACK)/wheels/*.whl
	mkdir -p data $(GPU_OUT) && tar -C data -xJf $(GPU_PACK)/cifar10.tar.xz && tar -C data -xJf $(GPU_PACK)/mnist.tar.xz
	rm -rf $(FROST) && cp -r $(GPU_PACK)/frost $(FROST)
	PYTHONPATH=/tmp/site:$(CURDIR) DENETDM_DATA=$(CURDIR)/data DENETDM_COMMIT=$$(cat $(GPU_PACK)/commit) \
		PYTHONUNBUFFERED=1 $(PY) tests/reproduce.py --out /tmp/reproduce \
		--budget $(BUDGET) --cifar-source data/cifar10 --pack $(GPU_OUT)/records.tar.gz $(ARGS)

# Test services on this host (docs/cluster.md): munge, SLURM (a controller, nodes n1 and n2) and PostgreSQL, installed
# from Debian's packages where absent; the cluster tests read $(CLUSTER_DIR)/env.sh and skip without it.
CLUSTER_DIR ?= /tmp/denetdm-cluster
cluster-up:
	CLUSTER_DIR=$(CLUSTER_DIR) bash tests/cluster/up.sh

cluster-down:
	CLUSTER_DIR=$(CLUSTER_DIR) bash tests/cluster/down.sh

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
