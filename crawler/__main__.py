"""`python -m crawler` runs the command line."""

import sys

from crawler.cli import run

sys.exit(run())
