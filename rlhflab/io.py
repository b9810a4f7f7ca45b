"""Atomic file writes and the run directory every stage writes (DESIGN.md, "The run directory")."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from rlhflab.errors import RlhfLabError


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """A handle on a temp file in the same folder, renamed to `path` on success, so readers never
    see half a file. The file gets the usual permissions (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlhfLabError(f"{path} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise RlhfLabError(f"{path} is not valid JSON ({exc}).") from None


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RunDir:
    """`runs/<name>/<stage>/`: config.yaml, metrics.jsonl, samples.jsonl, model/, checkpoints/, summary.json."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "latest" / "state.json").exists()

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the folder; refuse to silently clobber an earlier run."""
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            if not overwrite:
                raise RlhfLabError(
                    f"{self.path} already holds a run. Pass --resume to continue it, --overwrite to "
                    f"start again, or choose another name with name=..."
                )
            shutil.rmtree(self.path)
        if resume and not self.has_checkpoint():
            raise RlhfLabError(f"Nothing to resume in {self.path}: it has no checkpoint. Run without --resume.")
        self.path.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line; a line is written whole with a single write call."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line]

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log has no duplicate steps."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
