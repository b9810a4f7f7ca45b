"""A tiny document model rendered twice: Markdown and one self-contained HTML file.

The report builds a list of blocks once; `to_markdown` and `to_html` render the same
blocks, so both files always hold the same sections and numbers. Every piece of text is
escaped by the renderer (model samples and config values can contain `<script>`, `|` or
backticks), so section code never has to think about escaping.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Code:
    """An inline code segment inside a paragraph (a command, a path)."""

    text: str


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None  # id for the table of contents (h2 only)


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[str | Code, ...]
    note: bool = False  # shown as a highlighted note ("not run", warnings)


@dataclass(frozen=True)
class Cell:
    """A table cell with a main text and a small secondary line (a sample and its score)."""

    text: str
    note: str = ""


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str | Cell]]
    caption: str | None = None
    numeric: bool = True  # right-align the columns after the first `left` (numbers); False for text tables
    left: int = 1
    summary: str | None = None  # when set: folded into a collapsible <details> in HTML, under a bold label in Markdown


@dataclass(frozen=True)
class Image:
    path: Path  # a PNG on disk: linked relatively from Markdown, embedded in HTML
    caption: str


@dataclass(frozen=True)
class Preformatted:
    text: str
    summary: str | None = None  # when set: a collapsible <details> in HTML, a bold label in Markdown
    language: str = ""


Block = Heading | Paragraph | Table | Image | Preformatted


def para(*parts: str | Code, note: bool = False) -> Paragraph:
    return Paragraph(tuple(parts), note=note)


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


# -- Markdown ---------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_text(text: object) -> str:
    """Text safe anywhere in Markdown, table cells included: one line, no raw HTML, no
    accidental emphasis, links or column breaks."""
    flat = re.sub(r"\s+", " ", str(text))  # a newline would end a table row; edge spaces stay (paragraph parts)
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", flat)


def _md_code(text: str) -> str:
    text = " ".join(text.split())
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _md_cell(cell: str | Cell) -> str:
    if isinstance(cell, Cell):
        return md_text(cell.text.strip()) + (f" *({md_text(cell.note.strip())})*" if cell.note else "")
    return md_text(cell.strip())


def _md_block(block: Block, base: Path) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + md_text(block.text)
    if isinstance(block, Paragraph):
        text = "".join(_md_code(p.text) if isinstance(p, Code) else md_text(p) for p in block.parts)
        return f"> **Note:** {text}" if block.note else text
    if isinstance(block, Table):
        lines = ["| " + " | ".join(md_text(h) for h in block.header) + " |",
                 "| " + " | ".join("---" if i < block.left or not block.numeric else "---:" for i in range(len(block.header))) + " |"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        if block.caption:
            lines += ["", f"*{md_text(block.caption)}*"]
        return "\n".join([f"**{md_text(block.summary)}**", "", *lines] if block.summary else lines)
    if isinstance(block, Image):
        rel = Path(os.path.relpath(block.path, base)).as_posix()
        target = rel.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        return f"![{md_text(block.caption)}]({target})\n\n*{md_text(block.caption)}*"
    if isinstance(block, Preformatted):
        fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", block.text)), default=0) + 1)
        body = f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
        return f"**{md_text(block.summary)}**\n\n{body}" if block.summary else body
    raise TypeError(f"unknown block {block!r}")


def to_markdown(doc: Document, base: Path) -> str:
    """Markdown; images are linked relative to `base` (the folder report.md lives in)."""
    parts = ["# " + md_text(doc.title)] + [_md_block(b, base) for b in doc.blocks]
    return "\n\n".join(parts) + "\n"


# -- HTML -------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.9em; border-bottom: 2px solid #1f77b4; padding-bottom: 6px; }
h2 { font-size: 1.45em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.15em; margin-top: 1.6em; }
nav { background: #f5f7fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 8px 14px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 12px 0 4px; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 5px 10px; vertical-align: top; }
th { background: #f0f3f6; text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.text td { max-width: 360px; }
.cell-note { display: block; color: #666; font-size: 0.85em; margin-top: 3px; }
.caption { color: #555; font-size: 0.9em; font-style: italic; margin: 2px 0 16px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; font-style: italic; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.88em; }
code { background: #f0f3f6; padding: 1px 4px; border-radius: 3px; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px; overflow-x: auto; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
"""


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_cell(cell: str | Cell) -> str:
    if isinstance(cell, Cell):
        note = f'<span class="cell-note">{_h(cell.note)}</span>' if cell.note else ""
        return _h(cell.text) + note
    return _h(cell)


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_h(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_h(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        text = "".join(f"<code>{_h(p.text)}</code>" if isinstance(p, Code) else _h(p) for p in block.parts)
        return f'<p class="note">{text}</p>' if block.note else f"<p>{text}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_h(h)}</th>" for h in block.header)
        body = []
        for row in block.rows:
            cells = "".join(
                f'<td class="num">{_html_cell(c)}</td>' if block.numeric and i >= block.left else f"<td>{_html_cell(c)}</td>"
                for i, c in enumerate(row)
            )
            body.append(f"<tr>{cells}</tr>")
        css = "" if block.numeric else ' class="text"'
        caption = f'<p class="caption">{_h(block.caption)}</p>' if block.caption else ""
        table = f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{caption}"
        return f"<details><summary>{_h(block.summary)}</summary>{table}</details>" if block.summary else table
    if isinstance(block, Image):
        data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
        return (f'<figure><img alt="{_h(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_h(block.caption)}</figcaption></figure>")
    if isinstance(block, Preformatted):
        pre = f"<pre>{_h(block.text.rstrip())}</pre>"
        return f"<details><summary>{_h(block.summary)}</summary>{pre}</details>" if block.summary else pre
    raise TypeError(f"unknown block {block!r}")


def to_html(doc: Document) -> str:
    """One HTML file with everything inline (CSS, images as data URIs): no network, no scripts."""
    toc = "".join(f'<a href="#{_h(b.anchor)}">{_h(b.text)}</a>' for b in doc.blocks
                  if isinstance(b, Heading) and b.anchor)
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_h(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_h(doc.title)}</h1>\n<nav>{toc}</nav>\n{body}\n</body>\n</html>\n"
    )
