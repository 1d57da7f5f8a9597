"""Offline analysis of varnet_ds training runs: reads run folders (or W&B histories) and writes the knee->brain
comparison report (``python analysis/compare.py RUN_A RUN_B --out DIR``). Never imports the training engine."""
