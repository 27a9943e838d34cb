"""`python -m edgeseg.training ...` is `edgeseg train ...`."""

import sys

from edgeseg.training.command import main

sys.exit(main())
