"""Content fingerprints: what decides whether a finished stage is still up to date.

A stage's key hashes the config sections it reads plus a fingerprint of every local file,
folder or earlier run those sections name. A file is fingerprinted by its bytes (so flipping
every label of a CSV changes it, though size and name stay); an earlier stage's run by the
run id it wrote when it finished (so retraining SFT makes PPO stale, even with the same
config); a bundled asset by its pinned package version; a hub id by its name.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

_CHUNK = 1 << 20


def digest(data: Any) -> str:
    """sha256 of a JSON-serialisable value (keys sorted), as 16 hex digits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(reference: str) -> str | None:
    """The fingerprint of what `reference` names, or None when it names nothing local.

    `reference`: a bundled asset name, a local file/folder, `file.py:function`, an earlier
    stage's run folder (or its model/), or anything else (then None: the string itself counts).
    """
    from rlhflab.assets import ASSETS, BETA_SUFFIX

    reference = reference.rpartition(BETA_SUFFIX)[0] or reference  # an ILQL model at some β is its folder
    if reference in ASSETS:
        asset = ASSETS[reference]
        return f"asset:{asset.pip_name}=={asset.version}"
    path = Path(reference).expanduser()
    if not path.exists() and ":" in reference:  # module.py:function
        path = Path(reference.rsplit(":", 1)[0]).expanduser()
    if not path.exists():
        return None
    run = run_identity(path)
    if run is not None:
        return run
    stat = path.stat()
    return _content(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def run_identity(path: Path) -> str | None:
    """`run:<id>` for a finished stage folder (or its model/ inside), else None."""
    for folder in (path, path.parent) if path.name == "model" else (path,):
        stage = folder / "stage.json"
        if stage.is_file():
            try:
                return "run:" + json.loads(stage.read_text(encoding="utf-8"))["run_id"]
            except (ValueError, KeyError, TypeError):
                return "run:unreadable"
        if (folder / "summary.json").is_file():  # written before stage.json existed
            return "run:" + hashlib.sha256((folder / "summary.json").read_bytes()).hexdigest()[:16]
    return None


@lru_cache(maxsize=256)
def _content(path: str, size: int, mtime_ns: int) -> str:
    """Hash of a file's bytes, or of a folder's file names and bytes (size/mtime key the cache)."""
    root = Path(path)
    hasher = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    for file in files:
        hasher.update(str(file.relative_to(root) if file != root else file.name).encode() + b"\0")
        hasher.update(_file_hash(str(file), *_stat(file)).encode())
    return "sha256:" + hasher.hexdigest()[:16]


@lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def strings(tree: Any) -> Iterable[str]:
    """Every string inside nested dicts and lists."""
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from strings(value)


def references(tree: Any) -> dict[str, str]:
    """reference -> fingerprint for every string in `tree` that names something local.

    A single character ("." or "~" as a separator) or a string naming the working folder or
    one above it is a value, not a reference: hashing it would read the whole tree, the run's
    own outputs too, and the key would change with every run."""
    out = {}
    for text in strings(tree):
        if len(text.strip()) > 1 and text not in out and len(text) < 4096 and "\n" not in text \
                and not _holds_the_working_folder(text):
            found = fingerprint(text)
            if found is not None:
                out[text] = found
    return out


def _holds_the_working_folder(text: str) -> bool:
    try:
        path, here = Path(text).expanduser().resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return path == here or path in here.parents
