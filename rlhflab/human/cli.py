"""`rlhflab serve`, `rlhflab label create|export`, `rlhflab rate create|summary`.

Only argparse at import time (the main CLI imports this to build its parser); each handler
imports what it needs. Every handler raises RlhfLabError for mistakes a user can fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND_NAMES = ("serve", "label", "rate")
DEFAULT_DB = "runs/human/rlhflab.sqlite"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add serve, label and rate to the main parser; each leaf sets `args.handler`."""
    serve = commands.add_parser("serve", help="the web app for labelling and blind rating")
    _db(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                       "any other address requires an access token)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--token", help="access token (default: $RLHFLAB_TOKEN, else a new one off loopback)")
    serve.set_defaults(handler=_serve)

    label = commands.add_parser("label", help="human labelling tasks: create from a file, export for `rlhflab reward`")
    label_commands = label.add_subparsers(dest="label_command", required=True)
    create = label_commands.add_parser("create", help="a task that asks raters to label texts, or pick the better of two responses")
    create.add_argument("--from", dest="source", required=True,
                        help="samples.jsonl of an evaluation, or a .csv/.jsonl/.json/.parquet file with a text column")
    create.add_argument("--kind", choices=("label", "pairs"), default="label",
                        help="label: one text, one label; pairs: which of two responses to a prompt is better")
    create.add_argument("--labels", nargs="+", default=["good", "bad"], help="label set (default: good bad)")
    create.add_argument("--question", help="the question shown above each item")
    create.add_argument("--text-column", help="column holding the text (default: detect response, text, review, ...)")
    create.add_argument("--prompt-column", help="column holding a prompt shown above the text (default: detect prompt, ...)")
    create.add_argument("--columns", nargs=2, metavar=("A", "B"), help="pairs: the two response columns")
    create.add_argument("--models", nargs=2, metavar=("A", "B"), help="pairs from a samples.jsonl: the two models to compare")
    create.add_argument("--limit", type=int, help="at most this many items (a random subset)")
    _common(create)
    create.set_defaults(handler=_label_create)
    export = label_commands.add_parser("export", help="write answers as the labels or pairs JSONL `rlhflab reward` reads")
    export.add_argument("--task", required=True, help="task name")
    export.add_argument("--out", help="output .jsonl (default: <db folder>/<task>-labels.jsonl or -pairs.jsonl)")
    export.add_argument("--positive", nargs="+", metavar="LABEL", help="labels exported as positive (1); with --negative, "
                        "required for number labels such as 1-5 stars; labels in neither are left out")
    export.add_argument("--negative", nargs="+", metavar="LABEL", help="labels exported as negative (0)")
    _db(export)
    export.set_defaults(handler=_label_export)

    rate = commands.add_parser("rate", help="blind rating of several models' responses (positivity and sense, 1-5)")
    rate_commands = rate.add_subparsers(dest="rate_command", required=True)
    rcreate = rate_commands.add_parser("create", help="a blind rating task from an evaluation's samples or fresh generations")
    rcreate.add_argument("--from-samples", help="an evaluation's samples.jsonl (responses and scores already there)")
    rcreate.add_argument("--models", nargs="+", help="with --from-samples: model names to compare (default: all); "
                         "otherwise: models to generate with, as run folders or NAME=SOURCE (e.g. runs/default/sft runs/default/rl)")
    rcreate.add_argument("--prompts", type=int, help="number of prompts (default: all in the samples; 20 when generating)")
    rcreate.add_argument("--reward", help="reward source for the scores of generated responses (default: the config's "
                         "reward_fn.source, else runs/<name>/reward; 'none' for no scores)")
    rcreate.add_argument("--config", help="config whose data section gives the held-out prompts (default: built-in defaults)")
    rcreate.add_argument("--max-new-tokens", type=int, default=24, help="response length when generating (default 24)")
    rcreate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature when generating (default 1.0)")
    rcreate.add_argument("--question", help="the question shown above each response")
    rcreate.add_argument("--run", help="the run folder these samples belong to, whose report shows the ratings (default: "
                         "the run of --from-samples runs/<name>/evaluate/samples.jsonl, or of the --models run folders)")
    _common(rcreate)
    rcreate.set_defaults(handler=_rate_create)
    summary = rate_commands.add_parser("summary", help="per-model table of reward, positivity and sense, with significance tests")
    summary.add_argument("--task", help="rating task (default: the latest one that has ratings)")
    summary.add_argument("--out", help="folder for rating_summary.json and .md (default: <run>/human/<task>/ for a task "
                         "of a run, which that run's report shows; else <database folder>/<task>/)")
    _db(summary)
    summary.set_defaults(handler=_rate_summary)


def _db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLite database (default {DEFAULT_DB})")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="task name (default: from the file; blind-rating for a rating); needed for a "
                        "second task of the same items")
    parser.add_argument("--seed", type=int, default=0, help="seed for the shuffled order (default 0)")
    _db(parser)


def _serve_hint(db: str, task: str) -> str:
    db_arg = "" if db == DEFAULT_DB else f" --db {db}"
    return f"Start the app with `rlhflab serve{db_arg}` and open http://127.0.0.1:8000/?task={task}"


# --- handlers ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> None:
    import socket

    from rlhflab.errors import RlhfLabError
    from rlhflab.human import store
    from rlhflab.human.auth import LOOPBACK, is_loopback, resolve_token

    if not 0 < args.port < 65536:
        raise RlhfLabError(f"--port must be 1-65535, got {args.port}.")
    token = resolve_token(args.host, args.token)
    try:  # uvicorn would log the clash and exit 1; say what to do instead
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host.strip("[]"), args.port))
    except OSError as exc:
        raise RlhfLabError(f"Cannot listen on {args.host}:{args.port} ({exc.strerror}). Pass another --port, or stop what uses it.") from None

    import uvicorn

    from rlhflab.human.app import create_app

    app = create_app(args.db, token=token, allowed_hosts=LOOPBACK if is_loopback(args.host) else None)
    with store.opened(args.db) as conn:
        tasks = store.list_tasks(conn)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{args.port}/"
    print(f"rlhflab serving {args.db} on {args.host}:{args.port} ({len(tasks)} task{'s' if len(tasks) != 1 else ''})")
    for task in tasks:
        print(f"  {task['name']:<28} {task['kind']:<7} {task['items']:>5} items  {task['answers']:>5} answers")
    if token:
        print(f"open: {url}?token={token}")
        if args.host in ("0.0.0.0", "::"):
            print(f"from other machines: http://{socket.gethostname()}:{args.port}/?token={token} (or this machine's address)")
        print("(the token is required on every request; keep it private)")
    else:
        print(f"open: {url}")
    print("Ctrl-C stops the server; every submitted answer is already saved.", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _label_create(args: argparse.Namespace) -> None:
    from rlhflab.data.labels import numeric_scale
    from rlhflab.data.sources import describe_dropped
    from rlhflab.human.tasks import create_label_task

    result = create_label_task(args.db, args.source, kind=args.kind, name=args.name, labels=args.labels, question=args.question,
                               text_column=args.text_column, prompt_column=args.prompt_column, columns=args.columns,
                               models=args.models, limit=args.limit, seed=args.seed)
    items = f"{result['items']} item{'s' * (result['items'] != 1)}"
    print(f"Created {result['kind']} task {result['name']!r} with {items} in {args.db}.")
    print(f"Kept {items}; {describe_dropped(result['left_out'])}.")
    scale = numeric_scale(args.labels) if args.kind == "label" else []
    if scale:  # told now, so nobody is surprised that the export asks for a mapping
        print(f"The labels {' '.join(args.labels)} are numbers, not positive/negative: export with --positive and "
              f"--negative, e.g. `rlhflab label export --task {result['name']} --positive {scale[-1]} --negative {scale[0]}`.")
    print(_serve_hint(args.db, result["name"]))


def _label_export(args: argparse.Namespace) -> None:
    from rlhflab.human.tasks import export_labels

    from rlhflab.data.sources import describe_dropped

    result = export_labels(args.db, args.task, args.out, positive=args.positive, negative=args.negative)
    note = f"; {describe_dropped(result['left_out'])}"
    if result["kind"] == "label":
        print(f"Wrote {result['rows']} labelled texts ({result['positive']} positive, {result['negative']} negative) to {result['path']}{note}.")
        print(f"Train a reward model on them: rlhflab reward --config configs/default.yaml "
              f"reward.data.source={result['path']} reward.data.per_class=null name=human")
    else:
        print(f"Wrote {result['rows']} preference pairs to {result['path']}{note}.")
        print(f"Train a reward model on them: rlhflab reward --config configs/default.yaml "
              f"reward.objective=pairs reward.pairs.source={result['path']} name=human")


def _rate_create(args: argparse.Namespace) -> None:
    from rlhflab.errors import RlhfLabError
    from rlhflab.human.tasks import check_run, create_rating_task, read_samples, run_of_samples

    check_run(args.run)  # a wrong --run fails before anything is read or generated
    if args.from_samples:
        samples = read_samples(args.from_samples)
        result = create_rating_task(args.db, samples, name=args.name, models=args.models, prompts=args.prompts,
                                    seed=args.seed, question=args.question, origin=args.from_samples,
                                    run=args.run or run_of_samples(args.from_samples))
    else:
        if not args.models:
            raise RlhfLabError("Say what to rate: --from-samples runs/<name>/evaluate/samples.jsonl, or --models SFT_RUN PPO_RUN to generate.")
        result = _generate_and_create(args)
    from rlhflab.data.sources import describe_dropped

    prompts = f"{result['prompts']} prompt{'s' * (result['prompts'] != 1)}"
    print(f"Created rating task {result['name']!r}: {result['items']} response{'s' * (result['items'] != 1)} ({prompts} x "
          f"{len(result['models'])} models: {', '.join(result['models'])}), shuffled, sources hidden.")
    print(f"Kept {prompts}; {describe_dropped(result['left_out'])}.")
    if result["run"]:
        print(f"The ratings belong to the run {result['run']}: `rlhflab rate summary` writes them to its human/ folder, "
              "and its report shows them.")
    else:
        print("The samples are from no run folder, so no run's report will show these ratings; create the task with "
              "--run RUN_DIR to attach them to one.")
    print(_serve_hint(args.db, result["name"]))


def _generate_and_create(args: argparse.Namespace) -> dict:
    import json

    from rlhflab.config import load_config
    from rlhflab.errors import RlhfLabError
    from rlhflab.human.generation import check_models, generate_samples, held_out_prompts, parse_models
    from rlhflab.human.tasks import create_rating_task, run_of_models
    from rlhflab.io import atomic_write_text

    models = parse_models(args.models)
    check_models(models)
    n = 20 if args.prompts is None else args.prompts
    if n < 1:
        raise RlhfLabError(f"--prompts must be a positive whole number, got {n}.")
    cfg = load_config(args.config, [])
    reward = None
    if (args.reward or "").lower() != "none":
        source = args.reward or cfg.reward_fn.source
        if source is None:
            source = str(Path(cfg.runs_dir) / cfg.name / "reward")
            if not Path(source).exists():
                raise RlhfLabError(f"No reward model at {source} to score the responses. Train one with `rlhflab reward`, "
                                   "pass --reward SOURCE, or --reward none to rate without scores.")
        from dataclasses import replace

        from rlhflab.rewards import build_reward

        reward = build_reward(replace(cfg.reward_fn, source=source))  # loads now: a bad source fails before generating
    prompts = held_out_prompts(cfg, n)
    samples = generate_samples(models, prompts, reward, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed)
    result = create_rating_task(args.db, samples, name=args.name, seed=args.seed, question=args.question, origin="generated",
                                run=args.run or run_of_models([source for _, source in models]))
    path = Path(args.db).parent / f"{result['name']}-samples.jsonl"
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in samples))
    print(f"Samples (with models and scores) saved to {path}")
    return result


def _rate_summary(args: argparse.Namespace) -> None:
    from rlhflab.errors import RlhfLabError
    from rlhflab.human.summary import format_rating_table, rating_summary, summary_folder, write_rating_summary

    summary = rating_summary(args.db, args.task)
    if not summary["ratings"]:  # said before the (empty) table, in one line; nothing is written
        raise RlhfLabError(f"Task {summary['task']!r} has no ratings yet (0 of {summary['items']} responses rated), so "
                           "nothing was written and any earlier summary is kept. Rate in the app (`rlhflab serve`) first.")
    out = Path(args.out) if args.out else summary_folder(summary, args.db)
    print(format_rating_table(summary), end="")
    json_path, md_path = write_rating_summary(summary, out)
    shown = f"; `rlhflab report {summary['run']}` shows it" if summary["run"] and not args.out else ""
    print(f"\nwrote {json_path} and {md_path}{shown}")
