"""The README, ARCHITECTURE.md and docs/ stay true: their runnable shell blocks run, every `rlhflab`
command in any shell block parses, relative links point at files, and the asset pins match the
Makefile's.

A shell block is runnable when the line before its opening fence is `<!-- runnable -->`; only
cheap commands (help, config checks) are marked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    text: str
    runnable: bool

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    """Every ```bash / ```sh block of a Markdown file, with whether the marker precedes it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() in ("```bash", "```sh", "```shell"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            blocks.append(Block(path, i + 1, "\n".join(lines[i + 1:end]), before == MARKER))
            i = end
        i += 1
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def rlhflab_argv(words: list[str]) -> list[str] | None:
    """What follows `rlhflab` (or `-m rlhflab` under a launcher), up to a pipe or redirection."""
    for i, word in enumerate(words):
        if word == "rlhflab" or word.endswith("/rlhflab"):
            rest = words[i + 1:]
            cut = next((k for k, w in enumerate(rest) if w in ("|", ">", ">>", "2>", "&&", ";")), len(rest))
            return rest[:cut]
    return None


ALL_BLOCKS = [block for path in DOCS if path.exists() for block in shell_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.runnable]


def test_the_readme_has_runnable_blocks_and_stays_short():
    readme = [block for block in RUNNABLE if block.path.name == "README.md" and block.path.parent == ROOT]
    assert len(readme) >= 2, "the README's install check and tour must stay marked runnable"
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 250


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_runnable_blocks_run(block: Block):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               RLHFLAB_DEBUG="1")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, f"{block}:\n{done.stderr[-2000:]}"


def test_every_rlhflab_command_in_the_docs_parses(capsys):
    from rlhflab.cli import parse_args

    seen, bad = 0, []
    for block in ALL_BLOCKS:
        for words in commands(block):
            argv = rlhflab_argv(words)
            if argv is None or {"-h", "--help", "--version"} & set(argv):
                continue
            seen += 1
            try:
                parse_args(argv)
            except SystemExit:
                bad.append(f"{block}: rlhflab {' '.join(argv)}: {capsys.readouterr().err.strip()[-300:]}")
    assert seen >= 40, f"only {seen} rlhflab commands found in the docs: is the block parser broken?"
    assert not bad, "\n".join(bad)


def test_a_wrong_command_in_a_block_is_caught(tmp_path):
    """The checks above can fail: a block with an unknown subcommand or flag does not parse."""
    from rlhflab.cli import parse_args

    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\nrlhflab sft --config x.yaml \\\n    --no-such-flag  # comment\n```\n")
    (block,) = shell_blocks(page)
    assert block.runnable
    assert commands(block) == [["rlhflab", "sft", "--config", "x.yaml", "--no-such-flag"]]
    with pytest.raises(SystemExit):
        parse_args(rlhflab_argv(commands(block)[0]))


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_point_at_files():
    broken = []
    for path in DOCS:
        if not path.exists():
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_documented_asset_pins_are_the_makefiles():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pins = set(re.search(r"^ASSETS := (.*)$", makefile, re.M).group(1).split())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("pip install --no-deps "))
    assert set(line.split()[3:]) == pins


def test_user_facing_text_cites_no_internal_spec_documents():
    """Report captions, errors and docs cite papers and exercises, not the spec files ("seed 00x")."""
    pattern = re.compile(r"seed\s+00\d", re.I)
    paths = [*DOCS, *(ROOT / "rlhflab").rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}" for p in paths if p.exists() and pattern.search(p.read_text(encoding="utf-8"))]
    assert not hits, hits
