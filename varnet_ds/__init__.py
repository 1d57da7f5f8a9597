"""varnet_ds: a memory-optimized DeepSpeed ZeRO-2 trainer for fastMRI's End-to-End VarNet (knee -> brain transfer,
MRAugment, W&B).

Layers (imports only go down; ``tests/test_layers.py``):

- L0 leaves: ``config`` (schema, choices, rerun guard), ``files`` (atomic writes), ``seeding``, ``distributed``
  (process group, device, collectives), ``rendezvous`` (ports, start-up watchdog), ``system`` (versions, memory),
  ``provenance`` (code, environment and data identity of a run), ``console``, ``exits`` (codes, the
  internal-error wrapper, the start-up signal recorder).
- L1: ``model/`` (VarNetDS, build_model, weights, the forward+loss step), ``data/`` (the real fastMRI pipeline),
  ``sim/`` (the simulator; ``data/`` never imports it).
- L2: ``eval/`` (metrics, Validator, selection, export), ``tracking/`` (metrics.jsonl, W&B, Tracker),
  ``profiling/`` (planner, benchmark, memory and comms estimates).
- L3: ``trainer/`` (build, loop, state, checkpoint, elastic), ``studies/`` (packing study runs).
- L4 entry points: ``train.py``, ``evaluate.py``, ``bench.py``, ``demo.py``, ``study.py``, ``study_bench.py``, and
  ``cli.py``, the ``varnet-ds`` command that dispatches to them.

Package ``__init__`` files hold a docstring only: import names from the module that defines them. The one exception
is ``__version__`` here, the package's only version (``pyproject.toml`` reads it).
"""

__version__ = "0.2.0"
