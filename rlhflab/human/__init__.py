"""Human feedback: a web app (SQLite-backed) for labelling texts and preference pairs, and for
blind ratings of several models' responses, plus exports for `rlhflab reward`.

    store.py       SQLite schema and queries        answers.py   task kinds, answer validation
    tasks.py       create tasks, export labels      summary.py   the blind-rating table + tests
    generation.py  fresh samples for a rating       app.py       FastAPI app (auth.py: access)
    cli.py         serve / label / rate commands    static/      the page (plain HTML/CSS/JS)

Importing this package is cheap (no web framework, no torch).
"""

__all__ = ["format_rating_table", "rating_summary", "write_rating_summary"]


def __getattr__(name: str):
    # Lazy, so `rlhflab --help` (which imports rlhflab.human.cli) loads nothing else.
    if name in __all__:
        from rlhflab.human import summary

        return getattr(summary, name)
    raise AttributeError(f"module 'rlhflab.human' has no attribute {name!r}")
