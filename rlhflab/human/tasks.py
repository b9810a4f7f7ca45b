"""Create labelling and blind-rating tasks from files, and export labels for the reward stage.

Label tasks read any table `rlhflab.data` reads (CSV, JSONL, JSON, Parquet, an evaluation's
samples.jsonl): one text per row (`text`, `response`, `review`, ... with an optional `prompt`),
or for preference pairs a prompt and two responses. Exports are exactly what `rlhflab reward`
reads: labels JSONL `{"text": ..., "label": 1|0}` (reward.data.source) or pairs JSONL
`{"prompt": ..., "chosen": ..., "rejected": ...}` (reward.objective=pairs, reward.pairs.source).

Rating tasks hold one item per (prompt, model) from an evaluation's samples.jsonl (or freshly
generated ones, `rlhflab.human.generation`); which model wrote a response, and its reward, stay
in the item's hidden meta.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rlhflab.data.labels import is_missing, label_or_none, numeric_scale
from rlhflab.data.pairs import PROMPT_COLUMNS
from rlhflab.data.sources import TEXT_COLUMNS, cell_text, describe_dropped, read_table
from rlhflab.data.tables import Table
from rlhflab.errors import RlhfLabError
from rlhflab.human import answers, store
from rlhflab.io import atomic_write_text

# An evaluation's samples.jsonl names the response `response`; it goes first so its prompt is
# shown apart from the response rather than read as the text.
LABEL_TEXT_COLUMNS = ("response", *TEXT_COLUMNS)
# Two responses to one prompt, tried in order when --columns is not given.
PAIR_COLUMNS = (("response_a", "response_b"), ("response_1", "response_2"), ("response1", "response2"),
                ("text_a", "text_b"), ("a", "b"), ("chosen", "rejected"))
SAMPLE_KEYS = ("prompt", "model", "response")  # required in a samples.jsonl row


# --- label and pair tasks ----------------------------------------------------------------


def create_label_task(db_path: str | Path, source: str, *, kind: str = "label", name: str | None = None,
                      labels: list[str] | tuple[str, ...] = answers.DEFAULT_LABELS, question: str | None = None,
                      text_column: str | None = None, prompt_column: str | None = None,
                      columns: list[str] | None = None, models: list[str] | None = None,
                      limit: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A label task (one text, one label) or a pairs task (pick the better of two responses)
    from `source`; items are shuffled by `seed` and cut to `limit`. Returns name, item count
    and `left_out` (reason -> count: rows that made no item, items past `limit`)."""
    if kind not in ("label", "pairs"):
        raise RlhfLabError(f"--kind must be label or pairs, got {kind!r}.")
    _check_limit(limit)
    config = answers.label_config(labels, question) if kind == "label" else answers.pairs_config(question)
    _check_source(source)
    table = read_table(str(source), "train", "--from")
    if len(table) == 0:
        raise RlhfLabError(f"{table.name} has no rows. Point --from at a file with one text per row.")
    left_out = Counter(table.dropped)  # what the reader passed over (files in a folder, ...)
    if kind == "label":
        items, dropped = _label_items(table, text_column, prompt_column)
    elif _is_samples(table) and columns is None:
        items, dropped = _sample_pair_items(table, models, random.Random(seed))
    else:
        items, dropped = _column_pair_items(table, columns, prompt_column, random.Random(seed + 1))
    left_out.update(dropped)
    if not items:
        raise RlhfLabError(f"{table.name} gave no items to label ({describe_dropped(left_out)}). Check the file and its columns.")
    random.Random(seed).shuffle(items)  # mixes models and sources, so order reveals nothing
    if limit is not None and len(items) > limit:
        left_out[f"items beyond --limit {limit}"] += len(items) - limit
        items = items[:limit]
    fingerprint = items_fingerprint(items)
    with store.opened(db_path) as conn:
        if name is None:
            _refuse_duplicate(conn, kind, fingerprint, "label create")
        name = name or _free_name(conn, f"{_stem(source)}-{kind}")
        store.create_task(conn, name, kind, config, {"from": str(source), "seed": seed, "fingerprint": fingerprint}, items)
    return {"name": name, "kind": kind, "items": len(items), "left_out": dict(left_out)}


def _label_items(table: Table, text_column: str | None, prompt_column: str | None) -> tuple[list[dict], Counter]:
    text_col = _column(table, text_column, LABEL_TEXT_COLUMNS, "text", required=True)
    prompt_col = _column(table, prompt_column, PROMPT_COLUMNS, "prompt", required=False)
    items, left_out = [], Counter()
    for i in range(len(table)):
        text = cell_text(table.data[text_col][i], table, i, text_col)
        prompt = cell_text(table.data[prompt_col][i], table, i, prompt_col) if prompt_col else ""
        # An empty response to a prompt is still a model's output to judge; a row with no text
        # at all gives the rater nothing.
        if not text and not prompt:
            left_out["rows with empty text"] += 1
            continue
        items.append({"prompt": prompt, "text": text, "meta": {"row": i, "fields": _hidden_fields(table, i, {text_col, prompt_col})}})
    return items, left_out


def _is_samples(table: Table) -> bool:
    """An evaluation's samples.jsonl: one response per (prompt, model)."""
    return all(key in table.columns for key in SAMPLE_KEYS)


def _sample_pair_items(table: Table, models: list[str] | None, rng: random.Random) -> tuple[list[dict], Counter]:
    """Pairs of two models' responses to the same prompt (which is A and which B is random).
    An empty response is kept: "something" against "nothing" is a real preference."""
    rows = [{c: table.data[c][i] for c in table.columns} for i in range(len(table))]
    chosen = _pick_models(rows, models, exactly=2, name=table.name)
    by_prompt, left_out = _group_by_prompt(rows, chosen, count_other_models=models is None)
    pairs = []
    for key, responses in by_prompt.items():
        if len(responses) < 2:
            left_out["prompts without a response from both models"] += 1
            continue
        first, second = responses[chosen[0]], responses[chosen[1]]
        if _clean(first["response"]) == _clean(second["response"]):
            left_out["prompts where both models gave the same response"] += 1  # nothing to prefer
            continue
        pairs.append((key, first, second))
    items = []
    for (key, first, second), swap in zip(pairs, _balanced_swaps(len(pairs), rng)):
        a, b = (second, first) if swap else (first, second)
        items.append({"prompt": _clean(a["prompt"]), "text": _clean(a["response"]), "text_b": _clean(b["response"]),
                      "meta": {"prompt_id": key, "a": _sample_meta(a), "b": _sample_meta(b)}})
    return items, left_out


def _column_pair_items(table: Table, columns: list[str] | None, prompt_column: str | None, rng: random.Random) -> tuple[list[dict], Counter]:
    if columns is not None:
        if len(columns) != 2:
            raise RlhfLabError(f"--columns takes the two response columns, got {len(columns)}: {columns}.")
        for col in columns:
            _column(table, col, (), "response", required=True)
        col_a, col_b = columns
    else:
        found = next((pair for pair in PAIR_COLUMNS if all(c in table.columns for c in pair)), None)
        if found is None:
            tried = ", ".join("/".join(p) for p in PAIR_COLUMNS)
            raise RlhfLabError(
                f"{table.name} has no pair of response columns (tried {tried}); columns are: "
                f"{', '.join(table.columns)}. Name them with --columns A B, or give an evaluation's samples.jsonl."
            )
        col_a, col_b = found
    prompt_col = _column(table, prompt_column, PROMPT_COLUMNS, "prompt", required=False)
    left_out, rows = Counter(), []
    for i in range(len(table)):
        if _no_response(table.data[col_a][i]) or _no_response(table.data[col_b][i]):
            left_out[f"rows with no value (null) in {col_a!r} or {col_b!r}"] += 1
            continue
        # An empty string is a response ("nothing") and stays; identical texts leave nothing to prefer.
        first = cell_text(table.data[col_a][i], table, i, col_a)
        second = cell_text(table.data[col_b][i], table, i, col_b)
        if first == second:
            left_out["rows with the same text in both responses"] += 1
            continue
        rows.append((i, first, second))
    items = []
    for (i, first, second), swap in zip(rows, _balanced_swaps(len(rows), rng)):
        prompt = cell_text(table.data[prompt_col][i], table, i, prompt_col) if prompt_col else ""
        fields = _hidden_fields(table, i, {col_a, col_b, prompt_col})
        items.append({"prompt": prompt, "text": second if swap else first, "text_b": first if swap else second,
                      "meta": {"row": i, "a": col_b if swap else col_a, "b": col_a if swap else col_b, "fields": fields}})
    return items, left_out


def export_labels(db_path: str | Path, task_name: str, out: str | Path | None = None, *,
                  positive: list[str] | None = None, negative: list[str] | None = None) -> dict[str, Any]:
    """Write a label task's answers as labels JSONL, or a pairs task's as pairs JSONL. With
    several raters an item takes its majority answer; ties are left out. `positive`/`negative`
    say which labels are 1 and 0 (required for number labels such as 1-5 stars; other labels
    are then left out). Returns the path and counts, with `left_out` (reason -> count)."""
    with store.opened(db_path, create=False) as conn:
        task = store.get_task(conn, task_name)
        if task["kind"] == "rating":
            raise RlhfLabError(f"{task_name!r} is a rating task; `rlhflab rate summary --task {task_name}` summarises it.")
        items = {item["id"]: item for item in store.task_items(conn, task["id"])}
        votes: dict[str, Counter] = defaultdict(Counter)
        for answer in store.task_answers(conn, task["id"]):
            votes[answer["item_id"]][answer["value"].get("label", answer["value"].get("choice"))] += 1
    if task["kind"] == "pairs" and (positive or negative):
        raise RlhfLabError(f"--positive/--negative map the labels of a label task; {task_name!r} is a pairs task "
                           "(its answers pick a response). Export it without them.")
    if not votes:
        raise RlhfLabError(f"Task {task_name!r} has no answers yet. Label some items (`rlhflab serve`), then export.")
    values = label_values(task["config"]["labels"], positive, negative, task=task_name) if task["kind"] == "label" else None
    rows: list[dict] = []
    left_out: Counter = Counter()
    ties = unmapped = 0
    for item_id, item in items.items():  # display order: stable across exports
        counts = votes.get(item_id)
        if not counts:
            left_out["items not answered yet"] += 1
            continue
        (top, n), *rest = counts.most_common()
        if rest and rest[0][1] == n:
            ties += 1
            left_out["items with tied votes"] += 1
            continue
        if values is not None:
            if values[top] is None:
                unmapped += 1  # e.g. "unsure", or "3" of 1-5 stars: not a positive or negative example
                left_out[f"items labelled {top!r} (neither positive nor negative)"] += 1
                continue
            # prompt and response apart: the reward stage cuts a long prompt, never the response
            rows.append({**({"prompt": item["prompt"]} if item["prompt"] else {}), "text": item["text"], "label": values[top]})
        else:
            chosen, rejected = (item["text"], item["text_b"]) if top == "a" else (item["text_b"], item["text"])
            if not chosen.strip() or not rejected.strip():
                # `rlhflab reward` refuses a pair with an empty side, so the file would not load.
                left_out["pairs with an empty response (the reward stage needs two texts)"] += 1
                continue
            rows.append({"prompt": item["prompt"], "chosen": chosen, "rejected": rejected})
    if not rows:
        raise RlhfLabError(f"Task {task_name!r} has answers but none to export ({describe_dropped(left_out)}).")
    suffix = "labels" if task["kind"] == "label" else "pairs"
    path = Path(out) if out else Path(db_path).parent / f"{task_name}-{suffix}.jsonl"
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return {"path": str(path), "kind": task["kind"], "rows": len(rows), "labelled": len(votes), "items": len(items),
            "ties": ties, "unmapped": unmapped, "left_out": dict(left_out),
            "positive": sum(r.get("label") == 1 for r in rows), "negative": sum(r.get("label") == 0 for r in rows)}


def label_values(labels: list[str], positive: list[str] | None = None, negative: list[str] | None = None, *,
                 task: str = "TASK") -> dict[str, int | None]:
    """What the reward stage learns from each label: 1 (positive), 0 (negative) or None (left out).

    With `positive`/`negative`, exactly those labels are 1 and 0 and every other is left out.
    Otherwise known spellings (good/bad, positive/negative, 1/0, yes/no, ...) keep their meaning;
    in a set of two labels an unknown one is the opposite of the other, or, when both are
    unknown, takes its position's meaning (first positive, second negative); any other label
    ("unsure", "skip") is not exported. Number labels outside 0/1 (1-5 stars) are a scale,
    not polarity: RlhfLabError asks for `positive`/`negative` rather than reading "1" as positive."""
    labels = list(labels)
    if positive or negative:
        return _explicit_values(labels, positive or [], negative or [], task)
    flags = f"`rlhflab label export --task {task} --positive LABEL... --negative LABEL...` (other labels are left out and counted)"
    scale = numeric_scale(labels)
    if scale:
        raise RlhfLabError(f"Task {task!r} has the labels {' '.join(labels)}: numbers ({', '.join(scale)}) are a scale, "
                           f"not positive/negative, so the export does not guess. Say which are which: {flags}, "
                           f"e.g. --positive {scale[-1]} --negative {scale[0]}.")
    values = {label: label_or_none(label) for label in labels}
    if len(labels) == 2:
        known = [v for v in values.values() if v is not None]
        for index, label in enumerate(labels):
            if values[label] is None:
                values[label] = 1 - known[0] if known else (1, 0)[index]
    if all(v is None for v in values.values()):
        raise RlhfLabError(f"Task {task!r} has the labels {' '.join(labels)}, none of them positive or negative "
                           f"(good/bad, positive/negative, 1/0, ...). Say which are which: {flags}.")
    return values


def _explicit_values(labels: list[str], positive: list[str], negative: list[str], task: str) -> dict[str, int | None]:
    by_lower = {label.lower(): label for label in labels}  # label_config keeps labels unique ignoring case

    def pick(names: list[str], flag: str) -> list[str]:
        picked = []
        for name in names:
            label = by_lower.get(str(name).strip().lower())
            if label is None:
                raise RlhfLabError(f"{flag} {name!r} is not a label of task {task!r}; its labels are: {' '.join(labels)}.")
            picked.append(label)
        return picked

    pos, neg = pick(positive, "--positive"), pick(negative, "--negative")
    both = [label for label in labels if label in pos and label in neg]
    if both:
        raise RlhfLabError(f"{' '.join(both)} given both as --positive and as --negative; name each label once.")
    return {label: 1 if label in pos else 0 if label in neg else None for label in labels}


# --- rating tasks ------------------------------------------------------------------------


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """An evaluation's samples.jsonl: one {"prompt_id", "prompt", "model", "response", "score", ...} per line."""
    path = Path(path)
    if not path.is_file():
        raise RlhfLabError(f"Samples file {path} does not exist. Run `rlhflab evaluate` first, or pass the path of its samples.jsonl.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RlhfLabError(f"Line {number} of {path} is not valid JSON ({exc.msg}). Fix or delete that line.") from None
        missing = [k for k in SAMPLE_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise RlhfLabError(f"Line {number} of {path} has no {', '.join(missing)}; each line needs prompt, model and response (an evaluation's samples.jsonl).")
        rows.append(row)
    if not rows:
        raise RlhfLabError(f"{path} holds no samples.")
    return rows


def create_rating_task(db_path: str | Path, samples: list[dict[str, Any]], *, name: str | None = None,
                       models: list[str] | None = None, prompts: int | None = None, seed: int = 0,
                       question: str | None = None, origin: str = "samples", run: str | Path | None = None) -> dict[str, Any]:
    """A blind rating of two or more models' responses to the same prompts (first `prompts`
    prompts that every model answered); items are shuffled, one per (prompt, model). An empty
    response is rated like any other. `run`: the run folder the samples came from (its report
    shows the ratings; see `run_of_samples`). Without `name`, the same samples rated a second
    time are refused (the existing task is named). Returns counts, with `left_out` (reason -> count)."""
    _check_limit(prompts, "--prompts")
    run = check_run(run)
    chosen = _pick_models(samples, models, exactly=None, name=origin)
    grouped, left_out = _group_by_prompt(samples, chosen, count_other_models=False)  # others: by --models
    by_prompt = {key: r for key, r in grouped.items() if len(r) == len(chosen)}
    left_out["prompts without a response from every model"] += len(grouped) - len(by_prompt)
    if not by_prompt:
        raise RlhfLabError(f"No prompt in {origin} has a response from every model ({', '.join(chosen)}; "
                           f"{describe_dropped(left_out)}). Rate models evaluated on the same prompts.")
    keys = list(by_prompt)
    if prompts is not None:
        if prompts > len(keys):
            raise RlhfLabError(f"--prompts {prompts} asks for more prompts than {origin} has with a response from every model ({len(keys)}). Use --prompts {len(keys)} or fewer.")
        left_out[f"prompts beyond --prompts {prompts}"] += len(keys) - prompts
        keys = keys[:prompts]
    items = []
    for key in keys:
        for model in chosen:
            row = by_prompt[key][model]
            items.append({"prompt": _clean(row["prompt"]), "text": str(row["response"]), "meta": {"prompt_id": key, **_sample_meta(row)}})
    random.Random(seed).shuffle(items)  # models interleaved: position says nothing about the source
    sources = {m: str(by_prompt[keys[0]][m].get("source", m)) for m in chosen}
    fingerprint = items_fingerprint(items)
    info = {"models": chosen, "sources": sources, "from": origin, "prompts": len(keys), "seed": seed,
            "run": run, "fingerprint": fingerprint}
    with store.opened(db_path) as conn:
        if name is None:
            _refuse_duplicate(conn, "rating", fingerprint, "rate create")
        # Not named after the models: raters see the task name.
        name = name or _free_name(conn, "blind-rating")
        store.create_task(conn, name, "rating", answers.rating_config(question), info, items)
    return {"name": name, "kind": "rating", "items": len(items), "prompts": len(keys), "models": chosen, "run": run,
            "left_out": {reason: n for reason, n in left_out.items() if n}}


def run_of_samples(path: str | Path) -> str | None:
    """The run folder an evaluation's samples file belongs to (runs/<name> for
    runs/<name>/evaluate/samples.jsonl: its parent is a stage folder), as an absolute path; else None."""
    from rlhflab.stages.registry import stage_folders

    folder = Path(path).expanduser().resolve().parent
    return str(folder.parent) if folder.name in stage_folders() else None


def run_of_models(sources: list[str]) -> str | None:
    """The one run folder that every model folder (runs/<name>/<stage>) lies in, else None."""
    from rlhflab.stages.registry import stage_folders

    runs = set()
    for source in sources:
        path = Path(source).expanduser()
        path = path.parent if path.name == "model" else path  # runs/<name>/<stage>/model
        if not path.is_dir() or path.name not in stage_folders():
            return None
        runs.add(str(path.resolve().parent))
    return runs.pop() if len(runs) == 1 else None


def check_run(run: str | Path | None) -> str | None:
    """`run` as an absolute path; RlhfLabError when it is not a folder."""
    if run is None:
        return None
    path = Path(run).expanduser()
    if not path.is_dir():
        raise RlhfLabError(f"--run {run}: no such run folder. Pass the folder of the run whose samples these are (runs/<name>).")
    return str(path.resolve())


def items_fingerprint(items: list[dict]) -> str:
    """What makes two tasks the same: their items' texts (and the model behind each), in any
    order, so a second create of the same samples is found whatever its shuffle seed."""
    def key(item: dict) -> list:
        meta = item.get("meta") or {}
        texts = [item.get("text") or "", item.get("text_b") or ""]
        sides = [meta.get("a"), meta.get("b")]
        if item.get("text_b") is not None and texts[1] < texts[0]:  # a pair is the same pair whichever side is shown first
            texts, sides = texts[::-1], sides[::-1]
        return [item.get("prompt") or "", *texts, str(meta.get("model")), json.dumps(sides, sort_keys=True, default=str)]

    rows = sorted(json.dumps(key(item), ensure_ascii=False) for item in items)
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()


def _refuse_duplicate(conn, kind: str, fingerprint: str, command: str) -> None:
    """RlhfLabError when a task of `kind` already holds exactly these items: a second task would
    split the raters' answers, and the first one's answers would seem to be gone."""
    for task in store.list_tasks(conn, kind):
        known = task["info"].get("fingerprint") or items_fingerprint(store.task_items(conn, task["id"]))
        if known == fingerprint:
            done = f"{task['answers']} answer{'s' * (task['answers'] != 1)} so far"
            raise RlhfLabError(f"Task {task['name']!r} already holds these items ({done}); open it with `rlhflab serve` "
                               f"(?task={task['name']}), or pass --name NEW to `rlhflab {command}` for a second task of them.")


def _pick_models(rows: list[dict], models: list[str] | None, *, exactly: int | None, name: str) -> list[str]:
    available = list(dict.fromkeys(str(r["model"]) for r in rows))
    if models:
        unknown = [m for m in models if m not in available]
        if unknown:
            raise RlhfLabError(f"{name} has no responses from {', '.join(unknown)}; its models are: {', '.join(available)}.")
        chosen = list(dict.fromkeys(models))
    else:
        chosen = available[:exactly] if exactly else available
    need = exactly or 2
    if len(chosen) < need or (exactly and len(chosen) != exactly):
        raise RlhfLabError(f"{name} needs responses from {'exactly' if exactly else 'at least'} {need} models; "
                           f"got {', '.join(chosen) or 'none'} (available: {', '.join(available)}). Choose them with --models.")
    return chosen


def _group_by_prompt(rows: list[dict], models: list[str], *, count_other_models: bool) -> tuple[dict[Any, dict[str, dict]], Counter]:
    """prompt key -> {model: first row}, in order of first appearance, and what was left out;
    the key is prompt_id when rows have one (two prompts may share a text), else the prompt
    text. A response of "" is a response; only a null one is missing."""
    grouped: dict[Any, dict[str, dict]] = {}
    left_out: Counter = Counter()
    for row in rows:
        model = str(row["model"])
        if model not in models:
            if count_other_models:  # models the user did not name: say so, they may want them
                left_out["rows from other models (choose two with --models)"] += 1
            continue
        if _no_response(row.get("response")):
            left_out["rows with no response (null)"] += 1
            continue
        key = row["prompt_id"] if not is_missing(row.get("prompt_id")) else _clean(row["prompt"])
        if model in grouped.get(key, {}):
            left_out["rows repeating a prompt and model (the first is used)"] += 1
            continue
        grouped.setdefault(key, {})[model] = row
    return grouped, left_out


def _no_response(value: object) -> bool:
    """None, NaN or NA: no response at all (an empty string is a response: the model said nothing)."""
    return not isinstance(value, str) and is_missing(value)


def _sample_meta(row: dict) -> dict[str, Any]:
    """What stays hidden on the server: which model, from where, and its reward."""
    return {"model": str(row["model"]), "source": row.get("source"), "score": _number(row.get("score")),
            "positive_probability": _number(row.get("positive_probability")), "sentiment": row.get("sentiment")}


# --- helpers -----------------------------------------------------------------------------


def _column(table: Table, wanted: str | None, candidates: tuple[str, ...], kind: str, *, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in table.columns:
            raise RlhfLabError(f"Column {wanted!r} not found in {table.name}; columns are: {', '.join(table.columns)}. Set --{kind}-column to one of them.")
        return wanted
    lowered = {c.lower(): c for c in table.columns}
    for name in candidates:
        if name in table.columns:
            return name
        if name in lowered:
            return lowered[name]
    if required:
        raise RlhfLabError(f"{table.name} has no {kind} column: looked for {', '.join(candidates)}; columns are: "
                           f"{', '.join(table.columns)}. Set --{kind}-column to the column holding the {kind}.")
    return None


def _hidden_fields(table: Table, index: int, shown: set) -> dict[str, Any]:
    """The row's other columns (model, score, original label...), JSON-safe, kept server-side."""
    out = {}
    for col in table.columns:
        if col in shown:
            continue
        value = table.data[col][index]
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            try:
                value = value.item()
            except (TypeError, ValueError):
                pass
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[col] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


def _clean(value: object) -> str:
    return "" if is_missing(value) else " ".join(str(value).split())


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _balanced_swaps(n: int, rng: random.Random) -> list[bool]:
    """Which items show their second response on the left: half of them, in random order, so
    neither source sits on one side (raters favour a side; the export undoes the swap)."""
    swaps = [i % 2 == 1 for i in range(n)]
    rng.shuffle(swaps)
    return swaps


def _check_source(source: str) -> None:
    """A missing file named in --from terms (read_table's message speaks of data.source)."""
    from rlhflab.data.bundled import BUNDLED

    text = str(source).strip()
    if text.lower() in BUNDLED or text.startswith("hf:") or Path(text).expanduser().exists():
        return
    raise RlhfLabError(f"--from {text}: no such file ({Path(text).expanduser().resolve()}). Pass an evaluation's samples.jsonl "
                       "or a .csv/.jsonl/.json/.parquet file with a text column.")


def _check_limit(limit: int | None, option: str = "--limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RlhfLabError(f"{option} must be a positive whole number, got {limit!r}.")


def _stem(source: str) -> str:
    stem = Path(str(source).removeprefix("hf:")).stem or "task"
    stem = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "-" for ch in stem).strip("-_")
    return stem[:40] or "task"


def _free_name(conn, base: str) -> str:
    taken = {t["name"] for t in store.list_tasks(conn)}
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name
