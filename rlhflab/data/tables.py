"""Readers that turn each supported source into one plain `Table`.

Every reader converts library errors (pandas, pyarrow, json, datasets) into RlhfLabError here,
so nothing raw leaks out of `load_reviews`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.errors import RlhfLabError

FILE_TYPES = (".csv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Table:
    """Column-wise raw rows of one source, plus how to name a row in error messages."""

    name: str  # how messages refer to the source, e.g. "data/reviews.csv"
    columns: list[str]
    data: dict[str, list]  # column -> values, all the same length
    where: Callable[[int], str]  # row index -> "line 7", "row index 3", a file path, ...
    # What the reader passed over, reason -> count (e.g. {"files in pos/ and neg/ not ending in
    # .txt": 2}); reasons start with a plural noun so "2 files ..." reads as a sentence.
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data[self.columns[0]]) if self.columns else 0


def table_from_frame(frame, name: str, where: Callable[[int], str]) -> Table:
    """Wrap a pandas DataFrame (column names forced to str so messages read well)."""
    columns = [str(c) for c in frame.columns]
    data = {str(c): frame[c].to_list() for c in frame.columns}
    return Table(name, columns, data, where)


def table_from_rows(rows: list[dict], name: str, where: Callable[[int], str]) -> Table:
    """Wrap a list of JSON objects; keys absent from a row read as None (missing)."""
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    data = {c: [row.get(c) for row in rows] for c in columns}
    return Table(name, [str(c) for c in columns], {str(c): v for c, v in data.items()}, where)


def _not_utf8(path: Path, name: str) -> RlhfLabError:
    """Error for a file that is not UTF-8, naming the first bad line when it can."""
    raw = path.read_bytes()
    encoding = "latin1"  # the usual culprit for old CSV exports
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        hint, encoding = " (it starts with a UTF-16 byte-order mark)", "utf-16"
    else:
        hint = ""
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                hint = f" (first undecodable bytes on line {number})"
                break
    return RlhfLabError(
        f"{name} is not UTF-8 text{hint}. Re-save it as UTF-8, e.g. "
        f"`iconv -f {encoding} -t utf-8 {path.name} > fixed{path.suffix}` or your editor's "
        "'Save with encoding: UTF-8'."
    )


def _read_text(path: Path, name: str) -> str:
    """The whole file as text; a leading BOM is dropped (utf-8-sig)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path, name) from None
    except OSError as err:
        raise _unreadable(name, err) from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library messages can run for pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unreadable(name: str, err: BaseException) -> RlhfLabError:
    reason = getattr(err, "strerror", None) or first_line(err)
    return RlhfLabError(
        f"could not read {name}: {reason}. Check that the file exists and is readable."
    )


def read_csv(path: Path, name: str) -> Table:
    import pandas as pd

    with warnings.catch_warnings():
        # pandas only warns (and drops data) when a row has more fields than the header.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            # dtype=str + keep_default_na=False: labels stay as written ("1", "pos") and
            # empty cells become "" (treated as missing), not guessed-at floats.
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8-sig"
            )
        except UnicodeDecodeError:
            raise _not_utf8(path, name) from None
        except pd.errors.EmptyDataError:
            raise RlhfLabError(f"{name} contains no reviews: the file is empty.") from None
        except pd.errors.ParserWarning:
            raise RlhfLabError(
                f"could not parse {name} as CSV: some rows have more fields than the header. "
                "Quote fields that contain commas, or add the missing column names to the header."
            ) from None
        except (pd.errors.ParserError, ValueError) as err:
            raise RlhfLabError(
                f"could not parse {name} as CSV: {first_line(err)}. Check quoting and that "
                "every row has as many fields as the header."
            ) from None
        except OSError as err:
            raise _unreadable(name, err) from None
    # CSV rows can span lines (quoted newlines), so name rows by position, not line number.
    return table_from_frame(
        frame, name, lambda i: f"data row {i + 1} (counting from 1 after the header)"
    )


def read_jsonl(path: Path, name: str) -> Table:
    rows: list[dict] = []
    lines: list[int] = []  # file line number of each row, for messages
    for number, line in enumerate(_read_text(path, name).splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) are harmless
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RlhfLabError(
                f"line {number} of {name} is not valid JSON ({err.msg}). Fix or delete that "
                "line: each line must be one JSON object, one row: {\"column\": value, ...}."
            ) from None
        if not isinstance(row, dict):
            raise RlhfLabError(
                f"line {number} of {name} is a JSON {type(row).__name__}, not an object. Each "
                "line must be one JSON object, one row: {\"column\": value, ...}."
            )
        rows.append(row)
        lines.append(number)
    return table_from_rows(rows, name, lambda i: f"line {lines[i]}")


def read_json(path: Path, name: str) -> Table:
    text = _read_text(path, name)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line in a .json file: JSON Lines after all
            return read_jsonl(path, name)
        raise RlhfLabError(
            f"{name} is not valid JSON ({err.msg} at line {err.lineno}). Fix the file; it "
            "must hold a list of objects, one a row: [{\"column\": value, ...}]."
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        held = (
            "a list with non-object items" if isinstance(rows, list) else f"a {type(rows).__name__}"
        )
        raise RlhfLabError(
            f"{name} must hold a JSON list of objects, one a row: [{{\"column\": value, ...}}], "
            f"but it holds {held}. "
            "Reshape it, or save one object per line as a .jsonl file."
        )
    return table_from_rows(rows, name, lambda i: f"item {i + 1} of the list")


def read_parquet(path: Path, name: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except OSError as err:
        if isinstance(err, (PermissionError, FileNotFoundError)):
            raise _unreadable(name, err) from None
        raise _bad_parquet(name, err) from None
    except Exception as err:  # pyarrow raises many types (ArrowInvalid, ...) for corrupt files
        raise _bad_parquet(name, err) from None
    return table_from_frame(frame, name, lambda i: f"row index {i}")


def _bad_parquet(name: str, err: BaseException) -> RlhfLabError:
    detail = first_line(err)
    return RlhfLabError(
        f"could not read {name} as Parquet ({detail}). Check that it is a complete Parquet "
        "file, or export the data as .csv or .jsonl instead."
    )


READERS: dict[str, Callable[[Path, str], Table]] = {
    ".csv": read_csv,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".parquet": read_parquet,
}


def read_review_dir(root: Path, split: str, name: str) -> Table:
    """An aclImdb-style folder: <root>/<split>/{pos,neg}/*.txt or <root>/{pos,neg}/*.txt."""
    base = root / split
    if not (base / "pos").is_dir() or not (base / "neg").is_dir():
        if (root / "pos").is_dir() and (root / "neg").is_dir():
            base = root
        else:
            raise RlhfLabError(_dir_layout_message(root, split, name))
    texts: list[str] = []
    labels: list[int] = []
    files: list[Path] = []
    not_txt, sub_folder = "files in pos/ and neg/ not ending in .txt", "sub-folders in pos/ and neg/ (not read)"
    dropped = {not_txt: 0, sub_folder: 0}
    for folder, label in (("pos", 1), ("neg", 0)):
        # Sorted so the order (and hence every seeded sample) is the same on every machine.
        for file in sorted((base / folder).iterdir()):
            if file.is_dir():
                dropped[sub_folder] += 1
            elif file.suffix.lower() != ".txt":  # .DS_Store, urls lists, ...: counted, not read
                dropped[not_txt] += 1
            else:
                texts.append(_read_text(file, str(file)))
                labels.append(label)
                files.append(file)
    return Table(name, ["text", "label"], {"text": texts, "label": labels}, lambda i: str(files[i]),
                 {reason: n for reason, n in dropped.items() if n})


def _dir_layout_message(root: Path, split: str, name: str) -> str:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    found = f"it has the folders: {', '.join(subdirs)}" if subdirs else "it has no sub-folders"
    data_files = sorted(p.name for p in root.iterdir() if p.suffix.lower() in FILE_TYPES)
    tip = (
        f" It holds data files ({', '.join(data_files[:3])}): point data.source at one of them, "
        f"or use hf:{root} to load the folder as a Hugging Face dataset."
        if data_files
        else ""
    )
    return (
        f"directory {name} is not in the aclImdb layout: expected {split}/pos/ and {split}/neg/ "
        f"(or pos/ and neg/) holding .txt files, but {found}.{tip} Fix the layout, check "
        "data.split, or point data.source at a .csv/.jsonl/.json/.parquet file."
    )


def read_hf(dataset_id: str, split: str) -> Table:
    """A Hugging Face dataset by hub id or local folder, via datasets.load_dataset."""
    name = f"hf:{dataset_id} (split {split!r})"
    if not dataset_id.strip():
        raise RlhfLabError(
            "data.source 'hf:' needs a dataset id after it, e.g. hf:stanfordnlp/imdb."
        )
    import datasets  # heavy: only paid for when a hf: source is used

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # network, missing repo, bad split, unreadable files: all user-fixable
        detail = first_line(err)
        raise RlhfLabError(
            f"could not load Hugging Face dataset {dataset_id!r} split {split!r}: {detail}. "
            "Are you offline, or is there a typo in the id or split? Download it first, or use a "
            "local file instead (data.source=path/to/reviews.csv, .jsonl, .json, .parquet, or an "
            "aclImdb folder)."
        ) from None
    columns = list(ds.column_names)
    data = {c: list(ds[c]) for c in columns}
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            data[column] = _class_label_values(data[column], feature.names)
    return Table(name, columns, data, lambda i: f"row index {i}")


def _class_label_values(values: list, names: list[str]) -> list:
    """ClassLabel ids -> their names when those are sentiment words, so ["pos","neg"] order is
    honoured; -1 (the hub's "no label", e.g. imdb's unsupervised split) -> None.

    Other names keep the hub's two-class convention (id 0 negative, 1 positive) only when
    there are exactly two classes; with more (star ratings, neutral) ids 0 and 1 are not
    polarity, so each id becomes "<name> (class <id>)", which no label spelling matches and
    the label check reports."""
    from rlhflab.data.labels import label_or_none

    use_names = all(label_or_none(n) is not None for n in names)
    out = []
    for v in values:
        if v is None or v < 0:
            out.append(None)
        elif use_names and v < len(names):
            out.append(names[v])
        elif len(names) != 2 and v < len(names):
            out.append(f"{names[v]} (class {v})")
        else:
            out.append(v)
    return out
