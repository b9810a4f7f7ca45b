"""`python -m rlhflab ...` (and `accelerate launch -m rlhflab ...`): the same as the `rlhflab` command."""

from rlhflab.cli import run_and_exit

run_and_exit()
