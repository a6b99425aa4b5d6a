"""`python -m prompttune ...`: the same command line as `prompttune ...`."""

import sys

from .cli import main

sys.exit(main())
