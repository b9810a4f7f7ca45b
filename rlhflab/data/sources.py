"""`load_reviews`: any supported source -> a list of cleaned, labelled `Review`s."""

from __future__ import annotations

from pathlib import Path

from rlhflab.data.bundled import BUNDLED, read_bundled
from rlhflab.data.labels import clean_text, has_text, is_missing, label_or_none, normalize_labels
from rlhflab.data.records import Review
from rlhflab.data.tables import FILE_TYPES, READERS, Table, read_hf, read_review_dir
from rlhflab.data.weak_labels import WEAK_SOURCES, read_weak_labels
from rlhflab.errors import RlhfLabError

# Column names tried, in order, when data.text_column / data.label_column are not set.
# They cover text,label (HF imdb), review,sentiment (Kaggle IMDB) and sample,sentiment
# (the Shakespeare set).
TEXT_COLUMNS = ("text", "review", "sample", "sentence", "content")
LABEL_COLUMNS = ("label", "sentiment", "labels", "polarity")


class Reviews(list):
    """A list of `Review`s plus `dropped`: what loading left out, reason -> count, e.g.
    {"rows with empty text": 3, "files in pos/ and neg/ not ending in .txt": 1}. Each reason
    starts with a plural noun; `describe_dropped` turns the dict into a sentence."""

    def __init__(self, reviews=(), dropped: dict[str, int] | None = None):
        super().__init__(reviews)
        self.dropped: dict[str, int] = {k: v for k, v in (dropped or {}).items() if v}


def describe_dropped(dropped: dict[str, int]) -> str:
    """"0 left out", or "left out 3: 2 rows with empty text, 1 file ..." (plural noun first)."""
    counts = {reason: n for reason, n in dropped.items() if n}
    if not counts:
        return "0 left out"
    parts = []
    for reason, n in counts.items():
        if n == 1:  # "1 rows with ..." -> "1 row with ..."
            first, _, rest = reason.partition(" ")
            reason = f"{first.removesuffix('s')} {rest}".strip() if first.endswith("s") else reason
        parts.append(f"{n} {reason}")
    return f"left out {sum(counts.values())}: {', '.join(parts)}"


def load_reviews(
    source: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    require_labels: bool = True,
) -> Reviews:
    """Load reviews from `imdb`, `rotten-tomatoes`, `hf:<id or dir>`, a .csv/.jsonl/.json/.parquet
    file or an aclImdb-style folder. `split` applies to hf: sources and folders.

    Returns a list of `Review`s whose `.dropped` counts what was left out and why (rows with
    empty text, files in an aclImdb folder that are not .txt, ...)."""
    table = read_table(str(source), split)
    return table_to_reviews(table, text_column, label_column, require_labels)


def read_table(source: str, split: str, setting: str = "data.source") -> Table:
    """Pick the reader for `source` and return its raw rows. `setting` names the config key that
    gave `source`, for the error messages."""
    source = source.strip()
    if source.lower() in BUNDLED:
        return read_bundled(source.lower())
    if source.lower() in WEAK_SOURCES:
        return read_weak_labels(source.lower())
    if source.startswith("hf:"):
        return read_hf(source[3:].strip(), split)
    path = Path(source).expanduser()
    if path.is_dir():
        return read_review_dir(path, split, source)
    if not path.exists():
        bundled = " a bundled source (imdb, rotten-tomatoes) or" if setting == "data.source" else ""
        raise RlhfLabError(
            f"{setting} {source!r} was not found: no file or directory at {path.resolve()}. "
            f"Check the path, or use{bundled} hf:<dataset id>."
        )
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        folder = ", an aclImdb folder (pos/ and neg/), imdb or rotten-tomatoes" if setting == "data.source" else ""
        raise RlhfLabError(
            f"{setting} {source!r} has an unsupported file type {path.suffix or '(none)'!r}. "
            f"Supported: {', '.join(FILE_TYPES)} files, hf:<dataset id>{folder}. Convert the file to one of these."
        )
    return reader(path, source)


def _pick_column(
    table: Table, wanted: str | None, candidates: tuple[str, ...], kind: str, section: str = "data"
) -> str | None:
    """The explicit column if given (must exist), else the first candidate present. `section` is
    the config section whose `<kind>_column` setting named it, for the error message."""
    if wanted is not None:
        if wanted not in table.columns:
            raise RlhfLabError(
                f"{section}.{kind}_column {wanted!r} not found in {table.name}; columns are: "
                f"{', '.join(table.columns)}. Set {section}.{kind}_column to one of them."
            )
        return wanted
    for name in candidates:
        if name in table.columns:
            return name
    lowered = {c.lower(): c for c in table.columns}  # also accept "Text", "Sentiment", ...
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def table_to_reviews(
    table: Table, text_column: str | None, label_column: str | None, require_labels: bool
) -> Reviews:
    """Clean texts, drop those with nothing to read (empty, or only markup: counted in `.dropped`),
    and turn labels into 1/0 (or None when allowed)."""
    if len(table) == 0:
        passed = f" ({describe_dropped(table.dropped)})" if table.dropped else ""
        raise RlhfLabError(
            f"{table.name} contains no reviews{passed}. Point data.source at a file with rows."
        )
    text_col = _pick_column(table, text_column, TEXT_COLUMNS, "text")
    if text_col is None:
        raise RlhfLabError(
            f"{table.name} has no text column: looked for {', '.join(TEXT_COLUMNS)}; columns are: "
            f"{', '.join(table.columns)}. Set data.text_column to the column holding the text."
        )
    label_col = _pick_column(table, label_column, LABEL_COLUMNS, "label")
    if label_col is None and require_labels:
        raise RlhfLabError(
            f"{table.name} has no label column: looked for {', '.join(LABEL_COLUMNS)}; columns "
            f"are: {', '.join(table.columns)}. Set data.label_column to the column holding the "
            "sentiment labels."
        )

    texts = [cell_text(v, table, i, text_col) for i, v in enumerate(table.data[text_col])]
    prompts = ([cell_text(v, table, i, "prompt") for i, v in enumerate(table.data["prompt"])]
               if "prompt" in table.columns and text_col != "prompt" else [""] * len(texts))
    # No text left after cleaning, or only HTML markup (`<p></p>`, `&nbsp;`): nothing to learn
    # (an empty answer to a prompt is still an answer). The text is trained on as cleaned.
    shown = [has_text(text) or has_text(prompts[i]) for i, text in enumerate(texts)]
    keep = [i for i, ok in enumerate(shown) if ok]
    if not keep:
        raise RlhfLabError(
            f"{table.name} contains no reviews: the {text_col!r} column is empty (or only HTML markup) in every "
            f"row ({len(texts)}). Check data.text_column."
        )
    blank = sum(1 for i, ok in enumerate(shown) if not ok and not texts[i] and not prompts[i])
    dropped = {**table.dropped, "rows with empty text": blank,
               "rows with only markup or invisible characters": len(texts) - len(keep) - blank}
    if label_col is None:
        return Reviews((Review(texts[i], None, prompts[i]) for i in keep), dropped)

    raw = table.data[label_col]
    missing = [i for i in keep if is_missing(raw[i])]
    if missing and require_labels:
        raise RlhfLabError(
            f"{_rows(len(missing))} of {table.name} {'has' if len(missing) == 1 else 'have'} "
            f"no label in column {label_col!r}; the first is at {table.where(missing[0])}. "
            "Fill in those labels or remove those rows."
        )
    labelled = [i for i in keep if not is_missing(raw[i])]
    try:
        values = normalize_labels((raw[i] for i in labelled), label_col, table.name)
    except RlhfLabError as err:
        first = next(i for i in labelled if label_or_none(raw[i]) is None)
        raise RlhfLabError(f"{err} The first is at {table.where(first)}.") from None
    labels: dict[int, int | None] = dict(zip(labelled, values))
    return Reviews((Review(texts[i], labels.get(i), prompts[i]) for i in keep), dropped)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def check_scalar(value: object, table: Table, index: int, column: str) -> None:
    """RlhfLabError when a cell meant to hold one text or number holds a list or an object."""
    if isinstance(value, (list, tuple, dict)) or type(value).__name__ == "ndarray":
        kind = "an object" if isinstance(value, dict) else "a list"
        raise RlhfLabError(f"column {column!r} of {table.name} holds {kind}, not text, at {table.where(index)}. "
                           "Give each row plain text there.")


def cell_text(value: object, table: Table, index: int, column: str) -> str:
    """One cell as cleaned text ("" when missing). Numbers become their text; a list or an object
    is an RlhfLabError, as its text ("['a', 'b']") is never what the file meant."""
    if is_missing(value):
        return ""
    check_scalar(value, table, index, column)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RlhfLabError(
                f"{table.name} has text that is not UTF-8 in column {column!r} at "
                f"{table.where(index)}. Re-save the data as UTF-8."
            ) from None
    return clean_text(value if isinstance(value, str) else str(value))
