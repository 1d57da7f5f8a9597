# varnet_ds — two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# On a CUDA box override, e.g.: make install TORCH_SPEC="torch==2.11.0 --extra-index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
FASTMRI_SPEC ?= fastmri==0.3.0
STAMP := $(VENV)/.install-stamp

.PHONY: install demo results test lint bench clean

install: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-dev.txt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH_SPEC) -r requirements.txt -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps $(FASTMRI_SPEC)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@bash scripts/install_apt.sh mricron-data /usr/share/mricron/templates/ch2.nii.gz "using nilearn's MNI152 fallback"
	@bash scripts/install_apt.sh chromium /usr/bin/chromium "the report render test will try again"
	@# CPU only: build DeepSpeed's shared-memory comm op now (~30 s) instead of in the first training start
	DS_ACCELERATOR=cpu $(VPY) -c "import sys, torch; torch.cuda.is_available() and sys.exit(0); from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()" > /dev/null
	$(VPY) -c "import torch, deepspeed, fastmri, omegaconf, wandb, h5py; print('installed: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| fastmri', fastmri.__version__ if hasattr(fastmri, '__version__') else '0.3.0')"
	@touch $(STAMP)

demo: install
	$(VPY) -m varnet_ds.demo

# README headline table + figure from the demo study's study.json (after make demo)
results: install
	$(VPY) analysis/study.py runs/demo --readme README.md --figure-dir docs

test: install
	$(VPY) -m ruff check varnet_ds tests analysis
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -n 2 --dist loadscope tests

bench: install
	$(VPY) -m varnet_ds.bench

clean:
	rm -rf $(VENV) runs *.egg-info
