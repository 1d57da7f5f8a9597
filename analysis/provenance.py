"""``python analysis/provenance.py`` = ``varnet-ds provenance`` (the code: ``varnet_ds.analysis.provenance_cli``)."""

import sys

from _entry import main_of

if __name__ == "__main__":
    sys.exit(main_of("varnet_ds.analysis.provenance_cli")())
