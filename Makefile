# varnet_ds — two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
# The locked environment (docs/install.md): requirements.lock holds every package but torch, installed with --no-deps
# (fastmri without the pytorch-lightning/torchvision it declares); requirements-torch-cpu.lock holds the CPU torch.
LOCK := requirements.lock
TORCH_LOCK := requirements-torch-cpu.lock
# Where the "+cpu" torch wheel is published (pip tries its configured indexes first, then this one).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Your own torch build on top of the lock instead of the CPU one, e.g. on a CUDA machine:
#   make install TORCH_SPEC="torch==2.13.0+cu130 --extra-index-url https://download.pytorch.org/whl/cu130"
# It is remembered in $(VENV)/.torch-spec (a later `make test` keeps it); `make install TORCH_SPEC=` goes back to CPU.
TORCH_SPEC_FILE := $(VENV)/.torch-spec
ifeq ($(origin TORCH_SPEC),undefined)
TORCH_SPEC := $(shell cat $(TORCH_SPEC_FILE) 2>/dev/null)
endif
# `make lock`: the uv that resolves the lock, and the interpreter/platform the lock is for
UV_VERSION ?= 0.13.9
LOCK_PYTHON ?= 3.11
LOCK_PLATFORM ?= x86_64-manylinux_2_28
LOCK_ARGS ?=
UV_LOCK = $(VPY) -m uv pip compile --generate-hashes --upgrade \
	--custom-compile-command "make lock  (CPython $(LOCK_PYTHON), $(LOCK_PLATFORM); make install: pip --no-deps --require-hashes)" \
	--python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
	$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match) $(LOCK_ARGS)

.PHONY: install demo demo-2threads results test lint lock bench clean FORCE

install: $(STAMP)

# rewritten only when the spec changes, so that the stamp below is remade exactly then
$(TORCH_SPEC_FILE): FORCE
	@mkdir -p $(VENV)
	@printf '%s\n' '$(TORCH_SPEC)' | cmp -s - $@ || printf '%s\n' '$(TORCH_SPEC)' > $@

$(STAMP): pyproject.toml $(LOCK) $(TORCH_LOCK) $(TORCH_SPEC_FILE)
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q --no-deps --require-hashes -r $(LOCK)
ifeq ($(strip $(TORCH_SPEC)),)
	@$(VPY) -m pip install -q --no-deps --require-hashes -r $(TORCH_LOCK) 2>/dev/null \
	  || { echo "torch: not on pip's configured indexes; trying $(TORCH_INDEX)"; \
	       $(VPY) -m pip install -q --no-deps --require-hashes --extra-index-url $(TORCH_INDEX) -r $(TORCH_LOCK); }
else
	$(VPY) -m pip uninstall -q -y torch
	$(VPY) -m pip install -q $(TORCH_SPEC)
endif
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -m varnet_ds.sim.anatomy fetch
	@bash scripts/install_apt.sh chromium /usr/bin/chromium "the report render test will try again"
	$(VPY) -c "import torch, deepspeed, fastmri, omegaconf, wandb, h5py, varnet_ds; print('installed: varnet_ds', varnet_ds.__version__, '| torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| fastmri', fastmri.__version__)"
	@touch $(STAMP)

# Refresh both lock files to the newest versions the inputs allow (pyproject.toml with the dev, report and fastmri
# extras, requirements-torch-cpu.in, requirements-overrides.txt). Where the torch index cannot be reached but a local
# copy of the wheel is configured: make lock TORCH_INDEX= LOCK_ARGS="--find-links DIR"
lock:
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q uv==$(UV_VERSION)
	$(UV_LOCK) pyproject.toml requirements-torch-cpu.in --extra dev --extra report --extra fastmri \
	  --override requirements-overrides.txt --no-emit-package torch -o $(LOCK)
	$(UV_LOCK) requirements-torch-cpu.in --no-deps -o $(TORCH_LOCK)

demo: install
	$(VPY) -m varnet_ds.demo

# CPU: the same study again, one run at a time with all the cores (2 threads per run on the 2-core box: another float
# summation order): does its answer hold? (On a GPU node --nproc 1 is make demo's own layout.)
RERUN := runs/demo-2threads
demo-2threads: install
	$(VPY) -m varnet_ds.demo --nproc 1 --name demo-2threads

# README headline table + figure from the demo study's study.json (after make demo); after make demo-2threads the
# block also says whether each contrast's sign and "excludes zero" held in that rerun
results: install
	$(VPY) analysis/study.py runs/demo --readme README.md --figure-dir docs \
	  $(if $(wildcard $(RERUN)/report/study.json),--rerun $(RERUN)/report/study.json --rerun-command "make demo-2threads")

lint: install
	$(VPY) -m ruff check varnet_ds tests analysis

test: lint
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -n 2 --dist loadscope tests

bench: install
	$(VPY) -m varnet_ds.bench

clean:
	rm -rf $(VENV) runs *.egg-info
