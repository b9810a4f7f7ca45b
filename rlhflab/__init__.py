"""rlhflab: reinforcement learning from human feedback, end to end.

Importing the package is cheap: heavy libraries (torch, transformers) load only
when a stage runs.
"""

from rlhflab.errors import RlhfLabError

__version__ = "0.1.0"
__all__ = ["RlhfLabError", "__version__"]
