"""``python analysis/wandb_report.py`` = ``varnet-ds wandb-report`` (the code:
``varnet_ds.analysis.wandb_report.report``)."""

import sys

from _entry import main_of

if __name__ == "__main__":
    sys.exit(main_of("varnet_ds.analysis.wandb_report.report")())
