"""The real fastMRI data pipeline (L1): ``fastmri_file`` (one file's checks) and ``check`` (folders, CLI),
``preflight`` (the run's start-up check), ``datasets``, ``samplers``, ``loader`` (resumable training data),
``augment``/``augment_ops``/``device_augment`` (MRAugment). Never imports ``varnet_ds.sim``."""
