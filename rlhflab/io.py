"""Atomic file writes and the run directory every stage writes (DESIGN.md, "The run directory")."""

from __future__ import annotations

import contextlib
import errno
import json
import uuid
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from rlhflab.errors import RlhfLabError
from rlhflab.summaries import summary_json


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """A handle on a temp file in the same folder, renamed to `path` on success, so readers never
    see half a file. The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.

    Raises RlhfLabError when the folder cannot be written or the disk fills up; `path` keeps its
    previous content then.
    """
    path = Path(path)
    with user_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with user_os_errors(path):
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


# OS errors a user can fix (disk full, no permission, a file where a folder should be, ...).
_USER_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOENT: "a folder on the path does not exist or cannot be created",
}


@contextlib.contextmanager
def user_os_errors(path: Path, kept: str | None = None) -> Iterator[None]:
    """Turn OS errors a user can fix into one-line RlhfLabErrors naming `path` and what was kept."""
    try:
        yield
    except Exception as exc:
        cause = os_error_of(exc)
        reason = _USER_ERRNOS.get(cause.errno) if cause is not None else None
        if reason is None or isinstance(exc, RlhfLabError):
            raise
        kept = kept or (f"{path} was not changed" if Path(path).exists() else "nothing was written")
        raise RlhfLabError(f"Cannot write {path}: {reason} ({cause.strerror}); {kept}. "
                           f"Fix that (free space, choose another folder) and run again.") from exc


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OS error behind `exc`: itself, or the one a Rust library names at the end of its message
    (safetensors' SafetensorError, tokenizers' Exception: "... No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    found = _RUST_OS_ERROR.search(str(exc))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


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


def append_line(path: Path, *lines: str) -> None:
    """Append `lines` to a step log (metrics.jsonl, samples.jsonl) in one write call. A full disk is
    one RlhfLabError: the last line may then be cut short, which readers skip and a resume drops."""
    with user_os_errors(path, kept="the lines already in it are kept (a cut-short last one is dropped on --resume)"):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file ([] when there is none); a line that does not parse (the
    half-written last line of a run still going) is skipped, so readers of live runs never fail."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlhfLabError(f"{path} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise RlhfLabError(f"{path} is not valid JSON ({exc}).") from None


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename.

    A crash between the two renames leaves `.<name>.old`; `clean_leftovers` puts it back.
    """
    with user_os_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with user_os_errors(target):
            yield tmp
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                _remove(old)
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_leftovers(folder: Path) -> None:
    """Remove what a killed atomic write left in `folder`: temp files/folders (`.<name>.*.tmp`),
    and `.<name>.old` (restored as `<name>` when the rename that replaced it never happened)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(".tmp"):
            _remove(entry)
        elif entry.name.endswith(".old"):
            original = folder / entry.name[1:-len(".old")]
            if original.exists():
                _remove(entry)
            else:
                os.replace(entry, original)


# -- links in a run folder ---------------------------------------------------------------------

SWEEP_DIR = "sweep"  # <runs_dir>/<name>/sweep/<point>/: the points of `rlhflab sweep` (rlhflab/sweep.py)


def shared_stage_link(stage: str) -> Path:
    """What a sweep point's `<stage>` links to: the base run's stage, `../../<stage>` (relative,
    so the runs folder can move)."""
    return Path("..") / ".." / stage


def _is_shared_stage_link(link: Path, stage: str) -> bool:
    """A link that `rlhflab sweep` made: `<base>/sweep/<point>/<stage> -> ../../<stage>`, whose
    target is a real folder (or nothing yet) of the base run, not another link."""
    try:
        text = os.readlink(link)
    except OSError:
        return False
    target = link.parent.parent.parent / stage
    return (text == str(shared_stage_link(stage)) and link.parent.parent.name == SWEEP_DIR
            and not target.is_symlink())


def _refuse_link(link: Path) -> None:
    try:
        where = os.readlink(link)
    except OSError:
        where = "?"
    raise RlhfLabError(f"{link} is a symbolic link (to {where}), where rlhflab expects a real file or folder of the run: "
                       f"it cleans, resumes and replaces only what is inside the run, so it leaves this run alone. "
                       f"Remove the link (or put a copy of what it points to in its place) and run again, "
                       f"or choose another name with name=...")


def _first_link_inside(folder: Path) -> Path | None:
    """The first symbolic link anywhere under `folder` (links are not followed), or None."""
    for top, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(top, name)):
                return Path(top) / name
    return None


def _remove(path: Path) -> None:
    """Delete a file or folder; a symbolic link is unlinked, never followed (see RunDir)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RunDir:
    """`runs/<name>/<stage>/`: config.yaml, metrics.jsonl, samples.jsonl, model/, checkpoints/,
    summary.json, stage.json.

    A run is built in `<stage>.partial/` beside the finished one and replaces it in one rename
    when it finishes (`finish`), so a rerun that fails, or is interrupted, never loses the
    finished stage. `path` is where the run reads and writes now: the partial folder while a run
    is open, the finished folder otherwise.

    The finished folder may be a symbolic link to another run's stage (a sweep point's link to a
    stage its points share, rlhflab/sweep.py): nothing here deletes, cleans or renames anything
    through it. A new run of this stage replaces the link itself when it finishes.
    """

    def __init__(self, path: Path):
        self.final = Path(path)
        self.path = self.final
        self.stage_facts: dict[str, Any] = {}  # the stage's key (rlhflab/stages/registry.py), set on open
        self.tracker = None  # an Accelerate tracker when `tracking:` asks for one (rlhflab/tracking.py)

    @property
    def partial(self) -> Path:
        return self.final.with_name(f"{self.final.name}.partial")

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

    def has_checkpoint(self, folder: Path | None = None) -> bool:
        return ((folder or self.path) / "checkpoints" / "latest" / "state.json").exists()

    def is_finished(self) -> bool:
        return (self.final / "summary.json").exists()

    def recover(self) -> None:
        """Finish a swap that a kill interrupted, and clear temp files a killed write left.

        Raises RlhfLabError, before anything is changed, when a symbolic link stands where the run
        has a folder or file (a handed run folder whose `checkpoints/` links elsewhere would have
        its cleaning and resume act on the link's target); only a sweep's link to a shared stage
        (see the class docstring) is allowed, and nothing is cleaned through it."""
        old = self.final.with_name(f".{self.final.name}.old")
        if self.final.parent.is_symlink():  # runs/<name> itself links elsewhere
            _refuse_link(self.final.parent)
        self._refuse_links(old)
        if old.exists() or old.is_symlink():
            if not self.final.exists() and (self.partial / "summary.json").exists():
                os.replace(self.partial, self.final)  # killed between the two renames of `finish`
            if self.final.exists():
                _remove(old)
            else:
                os.replace(old, self.final)
        self._refuse_links(self.final)
        for folder in (self.final, self.partial):
            if folder.is_symlink():
                continue  # another run's folder (a shared stage): what it holds is not this run's to clean
            clean_leftovers(folder)
            clean_leftovers(folder / "checkpoints")

    def _refuse_links(self, *folders: Path) -> None:
        """Raise RlhfLabError for a link among `folders` and the partial folder (a sweep's shared-stage
        link excepted) or anywhere inside them."""
        for folder in (*folders, self.partial):
            if folder.is_symlink():
                if folder != self.partial and _is_shared_stage_link(folder, self.final.name):
                    continue
                _refuse_link(folder)
            if folder.is_dir():
                inner = _first_link_inside(folder)
                if inner is not None:
                    _refuse_link(inner)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Open the partial folder for a new run (or the interrupted one, on resume).

        Refuses to silently replace a finished or interrupted run; a folder a failed start left
        (no checkpoint) is simply replaced. The finished run stays until the new one finishes.
        """
        with user_os_errors(self.final):
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.recover()
            if resume:
                if not self.has_checkpoint(self.partial):
                    where = "it is finished" if self.is_finished() else "it has no checkpoint"
                    raise RlhfLabError(f"Nothing to resume in {self.final}: {where}. Run without --resume "
                                       f"(with --overwrite to start it again).")
            else:
                if not overwrite and self.has_checkpoint(self.partial):
                    raise RlhfLabError(f"{self.final} already holds an interrupted run. Pass --resume to continue it, "
                                       f"--overwrite to start again, or choose another name with name=...")
                if not overwrite and self.final.is_symlink():
                    raise RlhfLabError(f"{self.final} links to {self.final.resolve()}, a stage this run shares with others "
                                       f"(rlhflab sweep). Pass --overwrite to give this run its own (the link is replaced "
                                       f"when the new run finishes; the shared stage is kept), or rerun the sweep.")
                if not overwrite and _holds_files(self.final):
                    raise RlhfLabError(f"{self.final} already holds a finished run. Pass --overwrite to run it again "
                                       f"(it is replaced only when the new run finishes), or choose another name with name=...")
                _remove(self.partial)
            self.partial.mkdir(parents=True, exist_ok=True)
        self.path = self.partial

    def finish(self, summary: Any) -> "RunDir":
        """Write summary.json (`summary`: the stage's typed summary, rlhflab/summaries.py, or a dict
        for a stage without one) and stage.json (the stage's key and a new run id), then put the
        run in place."""
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
        write_json(self.path / "summary.json", summary_json(summary))
        write_json(self.path / "stage.json", {**self.stage_facts, "run_id": uuid.uuid4().hex})
        if self.path == self.partial:
            old = self.final.with_name(f".{self.final.name}.old")
            with user_os_errors(self.final):
                if self.final.exists() or self.final.is_symlink():
                    _remove(old)
                    os.replace(self.final, old)  # a link is moved as the link, its target untouched
                os.replace(self.partial, self.final)
                _remove(old)
        self.path = self.final
        return self

    def discard_failed_start(self) -> None:
        """After a failure: drop the partial folder unless it holds a checkpoint worth resuming."""
        if self.partial.is_dir() and not self.partial.is_symlink() and not self.has_checkpoint(self.partial):
            _remove(self.partial)
            with contextlib.suppress(OSError):
                self.final.parent.rmdir()  # runs/<name>/, if this failed start was all it held
        self.path = self.final

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (a line is written whole with a single write call), and send it to
        the tracker when `tracking:` set one (rlhflab/tracking.py)."""
        append_line(self.metrics_path, json.dumps(record))
        if self.tracker is not None:
            from rlhflab.tracking import log

            log(self.tracker, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line]

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the logs have no duplicate steps."""
        truncate_jsonl(self.metrics_path, after_step)
        truncate_jsonl(self.path / "samples.jsonl", after_step)


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Keep the lines of a step log up to `after_step` (lines without a step are kept).

    A line that is not a JSON object, or whose step is not a number (the half-written last line a
    kill leaves, or a damaged one), is dropped, as `read_jsonl` skips it."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("step", 0) if isinstance(row, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step <= after_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


# -- one writer per run ----------------------------------------------------------------------

LOCK_POLL_SECONDS = 0.2
_held: set[str] = set()  # lock files this process holds: it re-enters its own lock (pipeline -> stage)


def lock_path(run: Path) -> Path:
    """`<runs_dir>/.<name>.lock`, beside the run folder: taking the lock writes nothing inside the run."""
    run = Path(run)
    return run.parent / f".{run.name}.lock"


@contextlib.contextmanager
def run_lock(run: Path, *, wait: float = 0.0, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `run` (runs/<name>) as its one writer: an exclusive flock on `lock_path(run)`, which the
    kernel releases when the process dies, so the lock of a killed process is taken over.

    Waits up to `wait` seconds for another holder to let go, calling `waiting(holder)` once.
    Raises RlhfLabError naming the process that holds it. Re-entrant within a process."""
    path = lock_path(run)
    key = str(path)
    if key in _held:
        yield
        return
    if Path(run).is_symlink():  # cleaning and recovery would act on the link's target
        _refuse_link(Path(run))
    created = not path.parent.exists()
    with user_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline, told = time.monotonic() + wait, False
    while True:
        fd = _try_lock(path)
        if fd is not None:
            break
        holder = _describe_holder(path)
        if time.monotonic() >= deadline:
            raise RlhfLabError(f"{run} is in use: {holder} is writing it, and a run has one writer at a time. "
                               f"Wait for it to finish, or stop it, then run again.")
        if waiting is not None and not told:
            waiting(holder)
            told = True
        time.sleep(LOCK_POLL_SECONDS)
    if fd >= 0:
        with contextlib.suppress(OSError):  # who holds it, for the message a second writer gets
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {' '.join(['rlhflab', *sys.argv[1:]])[:300]}\n".encode(), 0)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        if fd >= 0:
            _unlock(path, fd, unlink=True)
        if created:
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # a runs_dir made only for the lock (a command that failed early)


def _try_lock(path: Path) -> int | None:
    """A locked fd on `path`; None when another process holds it; -1 where the file system has no
    locks (or no lock file can be made): the run goes on unlocked then, as before locks existed."""
    import fcntl

    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a handed runs folder whose lock file links elsewhere must not have us
            # truncate and write the link's target (ELOOP is refused below).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # not inherited by child processes
        except FileNotFoundError:
            continue  # the last holder of a runs_dir made for its lock removed it between mkdir and open
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse_link(path)
            return -1
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device put there: never written
            os.close(fd)
            raise RlhfLabError(f"{path} is not a regular file; rlhflab keeps a run's lock there. Remove it and run again.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            return -1
        # The holder before us unlinks the file as it lets go: a lock on that unlinked file guards
        # nothing, so lock the file that is at the path now.
        with contextlib.suppress(FileNotFoundError):
            here, ours = os.lstat(path), os.fstat(fd)
            if (here.st_ino, here.st_dev) == (ours.st_ino, ours.st_dev):
                return fd
        os.close(fd)


def _unlock(path: Path, fd: int, *, unlink: bool) -> None:
    if unlink:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held, so no one can lock the old file after us (see _try_lock)
    os.close(fd)  # releases the flock


def _describe_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"process {pid} ({command})" if command else f"process {pid}"
