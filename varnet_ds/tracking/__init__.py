"""Tracking (L2): ``metrics_file`` (metrics.jsonl, the source of truth), ``wandb_run`` (W&B login, keys, artifacts),
``tracker`` (the rank-0 Tracker that fans rows out to both)."""
