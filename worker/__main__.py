"""`python -m worker`: the same as `stemfleet worker`."""

import sys

from worker.cli import main

sys.exit(main())
