"""Statistics and reports of run and study folders (L2; reads files, imports no torch or DeepSpeed).

Shared: ``runs`` (the one loader of a run folder), ``stats`` (the one statistics method: scipy's bootstrap and
Wilcoxon), ``report_doc`` (markdown/HTML documents), ``plots``, ``recon``, ``provenance``. Products: ``compare/``
(the report of loose run folders, ``varnet-ds report``), ``study/`` (a study's statistics and page,
``varnet-ds study-report``), ``wandb_report/`` (a study's W&B Report, ``varnet-ds wandb-report``), and
``provenance_cli`` (``varnet-ds provenance``). Of the package they import only the torch-free ``run_folder``,
``study_folder``, ``files`` and ``exits`` (tests/test_layers.py holds them to it).
"""
