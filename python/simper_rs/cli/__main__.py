"""``python -m simper_rs.cli ...`` (what torchrun and accelerate launch take): the ``simper-rs`` command line."""

import sys

from . import main

sys.exit(main())
