"""``python -m varnet_ds COMMAND ...``: the same as the ``varnet-ds`` command (:mod:`varnet_ds.cli`)."""

import sys

from varnet_ds.cli import main

if __name__ == "__main__":
    sys.exit(main())
