"""`python -m amp_hf.compare ... -- <training command>` (see amp_hf/compare/cli.py)."""

import sys

from .cli import main

sys.exit(main())
