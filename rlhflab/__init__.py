"""rlhflab: reinforcement learning from human feedback, end to end.

Importing the package is cheap: heavy libraries (torch, transformers) load only
when a stage runs.

    import rlhflab
    result = rlhflab.train(model="smollm2-135m", prompts=[...], reward_fn=fn)   # rlhflab/api.py
"""

from rlhflab.errors import RlhfLabError

__version__ = "0.1.0"
__all__ = ["RlhfLabError", "__version__", "train"]


def __getattr__(name: str):
    if name == "train":  # imported on first use: `import rlhflab` stays cheap
        from rlhflab.api import train

        return train
    raise AttributeError(f"module 'rlhflab' has no attribute {name!r}")
