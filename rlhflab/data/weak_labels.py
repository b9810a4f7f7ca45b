"""Weak labels for a corpus: snippets of the plays, labelled happy/sad by a lexicon judge.

The Shakespeare RLHF exercise (Deep Learning Curriculum, topic 7) trained its reward model on
268 hand-labelled snippets; a user on a fresh machine has
none. `data.source: shakespeare-lexicon` gives the unattended route: every speech of the bundled
plays is cut into snippets of up to four lines, each scored with VADER (Hutto & Gilbert 2014;
package `vadersentiment`, lexicon bundled, no downloads), compound >= 0.5 labelled 1 (happy),
<= -0.5 labelled 0 (sad); the rest are left out and counted. These are weak labels: what a
lexicon says, not what a reader would; summaries and the report say so. The human route is
`rlhflab label create` + the web app + `rlhflab label export` (README).
"""

from __future__ import annotations

from functools import lru_cache

from rlhflab.data.tables import Table, table_from_rows
from rlhflab.errors import RlhfLabError

WEAK_SOURCES = {"shakespeare-lexicon": "shakespeare"}  # data.source -> corpus
THRESHOLD = 0.5
LINES_PER_SNIPPET = 4


def snippets(text: str, lines_per_snippet: int = LINES_PER_SNIPPET) -> list[str]:
    """Speeches (blocks between blank lines, speaker line "NAME." dropped) cut into runs of lines."""
    out = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and lines[0].isupper() and lines[0].endswith("."):
            lines = lines[1:]  # the speaker
        for start in range(0, len(lines), lines_per_snippet):
            part = lines[start : start + lines_per_snippet]
            if sum(len(line.split()) for line in part) >= 4:
                out.append("\n".join(part))
    return out


def lexicon_scorer():
    """VADER's compound score, text -> [-1, 1]."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise RlhfLabError("Weak labels need the vadersentiment package: pip install vadersentiment==3.3.2") from None
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: analyzer.polarity_scores(text)["compound"]


@lru_cache(maxsize=2)
def read_weak_labels(source: str) -> Table:
    """Rows (text, label, compound) of lexicon-labelled snippets of a bundled corpus.

    Cached: the corpus is a pinned package, and a pipeline reads the same labels in its reward,
    RL and evaluation stages (about 2 s of cleaning and lexicon scoring each time otherwise)."""
    from rlhflab.data.corpus import load_corpus

    corpus = load_corpus(WEAK_SOURCES[source])
    score = lexicon_scorer()
    rows, neutral = [], 0
    for _, text in corpus.documents:
        for snippet in snippets(text):
            compound = score(snippet)
            if abs(compound) < THRESHOLD:
                neutral += 1
                continue
            rows.append({"text": snippet, "label": int(compound > 0), "compound": compound})
    table = table_from_rows(rows, f"{source} (weak labels: VADER compound >= {THRESHOLD} happy, <= -{THRESHOLD} sad)",
                            lambda i: f"snippet {i}")
    table.dropped["snippets with a neutral lexicon score"] = neutral
    return table
