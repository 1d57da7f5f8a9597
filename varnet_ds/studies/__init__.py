"""Studies (L3): ``launch`` packs the runs of a study (arms x seeds) onto GPUs or CPU cores; the CLI is
``varnet_ds.study``."""
