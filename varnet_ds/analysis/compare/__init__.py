"""The two-run (loose run folders) comparison report: checks, numbers (``rows``), sections, the command (``report``),
and runs read from the W&B API (``wandb_source``)."""
