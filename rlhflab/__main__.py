"""`python -m rlhflab ...` (and `accelerate launch -m rlhflab ...`): the same as the `rlhflab` command."""

import sys

from rlhflab.cli import main

code = main()
if "torch" in sys.modules:  # a command that ran a model; under accelerate launch: see exit_process
    from rlhflab.engine.runtime import exit_process

    exit_process(code)
sys.exit(code)
