"""`python -m rlhflab ...` (and `accelerate launch -m rlhflab ...`): the same as the `rlhflab` command."""

import sys

from rlhflab.cli import main

sys.exit(main())
