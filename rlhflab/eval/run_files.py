"""Reading a run folder someone handed over (`report`, `compare`): only its own regular files.

Run folders are shared (a colleague's runs/, a downloaded run), so what they hold is data from
someone else. A symbolic link in one, or a path written in one of its files that is absolute or
climbs out with `..`, must never make a reader open (or embed in a "self-contained" report.html)
a file elsewhere on the reader's disk. `run_file` is the one check every read of a handed run
goes through; the readers below add the shape check (a JSON object, a YAML mapping read with the
safe loader) and raise `HandedFileError`, naming the file and what is wrong with it, for the
caller to show as a note.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePath

from rlhflab.errors import RlhfLabError


class HandedFileError(RlhfLabError):
    """A file of a handed run that was not read: a link, outside the run, not a regular file, or
    not of the shape its readers need. The message names the file and why."""


def run_file(root: Path, relative: str | PurePath, *, folder: bool = False) -> Path | None:
    """`root / relative` when it is a regular file (a folder with `folder=True`) inside `root`,
    reached through no symbolic link; None when nothing is there.

    `relative` may come from a handed file (a figure path in summary.json). Raises HandedFileError
    for a path that is absolute or has a `..`, a symbolic link anywhere below `root`, and anything
    but a regular file or folder (a FIFO would block the reader). `root` itself is what the user
    named, so a link there is followed.
    """
    root = Path(root)
    if not isinstance(relative, (str, PurePath)):
        raise HandedFileError(f"{relative!r} (under {root}) is not a path; it was not read.")
    rel = PurePath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise HandedFileError(f"{relative} is outside the run folder {root} (an absolute path or one with '..'); "
                              "only files inside the run are read, so it was not.")
    path = root
    try:
        mode = os.stat(root).st_mode
        for part in rel.parts:
            path = path / part
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise HandedFileError(f"{path} is a symbolic link (to {os.readlink(path)}); only regular files inside "
                                      f"the run folder {root} are read, so it was not.")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # a NUL byte in a path written in a handed file
        raise HandedFileError(f"{relative!r} (under {root}) is not a usable path; it was not read.") from None
    if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
        raise HandedFileError(f"{path} is not a {'folder' if folder else 'regular file'}; it was not read.")
    return path


def _text(root: Path, relative: str | PurePath) -> tuple[Path, str] | None:
    path = run_file(root, relative)
    if path is None:
        return None
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HandedFileError(f"{path} is not UTF-8 text; it was not read.") from None
    except OSError as exc:
        raise HandedFileError(f"{path} cannot be read ({exc.strerror}).") from None


def read_json_object(root: Path, relative: str | PurePath) -> dict | None:
    """The JSON object in `root / relative` (None when there is no file). Raises HandedFileError
    when it may not be read (see run_file), is not JSON, or holds something else than an object."""
    found = _text(root, relative)
    if found is None:
        return None
    path, text = found
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise HandedFileError(f"{path} is not valid JSON ({str(exc).splitlines()[0][:200]}); it was not read.") from None
    if not isinstance(data, dict):
        raise HandedFileError(f"{path} holds a JSON {type(data).__name__}, not the object it should; it was not read.")
    return data


def read_yaml_mapping(root: Path, relative: str | PurePath) -> tuple[str, dict] | None:
    """(text, data) of the YAML mapping in `root / relative` (None when there is no file), read
    with the safe loader: a tag such as `!!python/object` is refused, never constructed. Raises
    HandedFileError when it may not be read, is not YAML, or is not a mapping."""
    import yaml

    from rlhflab.config import parse_yaml

    found = _text(root, relative)
    if found is None:
        return None
    path, text = found
    try:
        data = parse_yaml(text)
    except (yaml.YAMLError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise HandedFileError(f"{path} is not plain YAML ({reason}); it was not read.") from None
    if not isinstance(data, dict):
        raise HandedFileError(f"{path} holds a YAML {type(data).__name__}, not the mapping it should; it was not read.")
    return text, data


def read_json_lines(root: Path, relative: str | PurePath) -> list[dict]:
    """The objects of the JSON-lines file `root / relative` ([] when there is none); lines that do
    not parse or are not objects are skipped, as for a run still writing its last line. Raises
    HandedFileError when the file may not be read (see run_file)."""
    found = _text(root, relative)
    rows = []
    for line in found[1].splitlines() if found else []:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def writable_folder(root: Path, relative: str | PurePath) -> None:
    """Refuse (RlhfLabError) to write into `root / relative` when it, or a folder on the way, is
    a symbolic link: files there are replaced and stale ones deleted, which must not happen
    outside the run. Nothing there yet is fine (it is created)."""
    try:
        run_file(root, relative, folder=True)
    except HandedFileError:
        raise RlhfLabError(f"{Path(root) / relative} (or a folder on the way to it) is a symbolic link or not a "
                           "folder; files there would be replaced and deleted, outside the run. Remove it, or pass "
                           "--out DIR to write elsewhere.") from None


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# What code reading a handed file's values raises when one has an unexpected type (a string where a
# number goes, a list where an object goes, a missing key): its readers turn these into notes.
SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, ZeroDivisionError)


def debug() -> bool:
    """RLHFLAB_DEBUG=1: let shape errors through with their tracebacks (for developers)."""
    return os.environ.get("RLHFLAB_DEBUG") == "1"

