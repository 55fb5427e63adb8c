"""``python -m simper_rs ...``: the ``simper-rs`` command line."""

import sys

from .cli import main

sys.exit(main())
