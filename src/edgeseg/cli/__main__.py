"""`python -m edgeseg.cli`: the `edgeseg` command."""

import sys

from edgeseg.cli import main

sys.exit(main())
