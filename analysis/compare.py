"""``python analysis/compare.py`` = ``varnet-ds report`` (the code: ``varnet_ds.analysis.compare.report``)."""

import sys

from _entry import main_of

if __name__ == "__main__":
    sys.exit(main_of("varnet_ds.analysis.compare.report")())
