"""`rlhflab <command>`: parse arguments, load the config, call a stage. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from rlhflab.errors import RlhfLabError, RunInterrupted

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool the closed pipe ended


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset (see configs/); defaults apply when omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values, e.g. sft.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from rlhflab import __version__

    parser = argparse.ArgumentParser(prog="rlhflab", description="Reinforcement learning from human feedback, end to end.")
    parser.add_argument("--version", action="version", version=f"rlhflab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    from rlhflab.stages.registry import RENAMED, STAGES  # a declaration only: no torch

    for stage in STAGES.values():
        old_names = [old for old, new in RENAMED.items() if new == stage.name]  # `rlhflab ppo` runs the rl stage
        _add_run_arguments(commands.add_parser(
            stage.name, aliases=old_names, help=stage.doc, description=f"{stage.doc[:1].upper()}{stage.doc[1:]}. Its "
            f"settings are the {stage.config_section}.* section of the config: `rlhflab config` prints them all, resolved."))
    pipeline = commands.add_parser("pipeline", help="the config's stages (SFT -> reward -> RL -> evaluate by default), then "
                                   "the report, skipping stages that are up to date")
    pipeline.add_argument("--config", help="YAML preset (see configs/); defaults apply when omitted")
    pipeline.add_argument("overrides", nargs="*", metavar="key=value", help="override config values, e.g. rl.steps=40")
    pipeline.add_argument("--force", metavar="STAGE", help=f"rerun from this stage on ({', '.join((*STAGES, 'report'))})")
    pipeline.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep = commands.add_parser(
        "sweep", help="a grid of overrides (key=a,b,c), one pipeline run per point, shared stages trained once; then compare",
        description="Each override that lists several values (rl.learning_rate=1e-5,1e-4) is a grid axis; the grid is "
                    "their product. Stages every point shares run once in <runs_dir>/<name>/; each point is its own run "
                    "in <runs_dir>/<name>/sweep/<point>/. Rerun the same command to resume.")
    sweep.add_argument("--config", help="YAML preset (see configs/); defaults apply when omitted")
    sweep.add_argument("overrides", nargs="*", metavar="key=value[,value...]",
                       help="several values: a grid axis; one value: holds for every point")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="run N points at once (default 1; on a 2-core machine 1 is right: two torch processes "
                            "slow each other several times over)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars (the points never show them)")
    compare = commands.add_parser("compare", help="RL runs side by side: a table, curves per metric, reward against KL")
    compare.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP",
                         help="runs/NAME/sweep (all its points), runs/NAME (its rl stage) or runs/NAME/rl")
    compare.add_argument("--out", metavar="DIR", help="where to write compare.md, compare.json and figures "
                                                      "(default: the first argument's compare/)")
    frontier = commands.add_parser("frontier", help="held-out reward against KL to the reference, every method "
                                                    "(RL, DPO, ILQL, best-of-n) a line, bars over seeds, gold judges beside")
    frontier.add_argument("runs", nargs="+", metavar="RUN",
                          help="runs/NAME (its rl, dpo and ilql stages), runs/NAME/<stage>, runs/NAME/evaluate "
                               "(its models and best-of-n, with gold judges) or runs/NAME/sweep (every point)")
    frontier.add_argument("--out", metavar="DIR", help="where to write frontier.png, frontier.json and frontier.csv "
                                                       "(default: <first run>/frontier)")
    score = commands.add_parser("score", help="print the reward of each text")
    score.add_argument("--reward", required=True, help="reward run directory, classifier (hub id or folder), or module:function")
    score.add_argument("--label", default="POSITIVE", help="classifier label whose score is the reward")
    score.add_argument("--output", default="auto", help="auto, score, probability, logit or logit_diff")
    score.add_argument("--flip", action="store_true", help="reward the opposite label")
    score.add_argument("--prompt", default="", help="a prompt the texts continue (scored as prompt + text)")
    score.add_argument("texts", nargs="+", help="texts to score")
    _add_generate(commands)
    report = commands.add_parser("report", help="build report.html (self-contained) and report.md from a run's stage folders")
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run folder, e.g. runs/default")
    report.add_argument("--out", metavar="DIR", help="where to write the report (default: RUN_DIR/report)")
    show = commands.add_parser("config", help="print the resolved config (after overrides) and exit")
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    from rlhflab.human.cli import add_commands as add_human_commands  # argparse only: cheap

    add_human_commands(commands)  # serve, label create|export, rate create|summary
    return parser


def _add_generate(commands) -> None:
    """`rlhflab generate`: models' samples side by side."""
    gen = commands.add_parser(
        "generate", help="models' samples for the same prompts side by side, with rewards (and best-of-n)",
        description="Each model (asset name, hub id, folder or run stage directory such as runs/default/sft) answers "
                    "every prompt -n times; the reward (--reward, else the config's reward_fn, else this run's reward "
                    "model when it exists) scores each sample, and evaluate.gold judges add columns.")
    gen.add_argument("--models", nargs="+", required=True, metavar="M", help="models to sample from, in column order")
    gen.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    gen.add_argument("--prompts-file", metavar="FILE",
                     help=".txt (one prompt per line) or .jsonl/.csv/.json with a prompt column (and optionally group)")
    gen.add_argument("-n", type=int, default=4, help="samples shown per prompt and model (default 4)")
    gen.add_argument("--best-of", type=int, metavar="N", help="draw N samples per shown one and keep the highest-reward")
    gen.add_argument("--reward", metavar="SRC", help="reward run directory, classifier (hub id or folder), or module:function")
    gen.add_argument("--label", help="classifier label whose score is the reward (default: reward_fn.label)")
    gen.add_argument("--flip", action="store_true", help="reward the opposite label")
    gen.add_argument("--config", help="YAML preset (see configs/); its reward_fn and evaluate.gold apply")
    gen.add_argument("overrides", nargs="*", metavar="key=value", help="override config values, e.g. name=negative")
    gen.add_argument("--max-new-tokens", type=int, help="tokens per response (default: generation.max_new_tokens, 24)")
    gen.add_argument("--temperature", type=float, help="sampling temperature (default: evaluate.temperature, 1.0)")
    gen.add_argument("--seed", type=int, help="sampling seed (default: the config's seed, 0)")
    gen.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    gen.add_argument("--device", help="auto, cpu or cuda (default: runtime.device)")


def _stage(args: argparse.Namespace) -> None:
    """Run one stage from a config and print its table."""
    from rlhflab.config import load_config
    from rlhflab.stages.registry import STAGES, current_stage

    args.command = current_stage(args.command, "rlhflab {}")  # `rlhflab ppo`: the stage's old name
    cfg = load_config(args.config, args.overrides)  # before torch loads: config errors are instant
    from rlhflab.engine.runtime import Runtime
    from rlhflab.stages.common import run_stage
    from rlhflab.summaries import dropped

    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    run_dir = run_stage(args.command, cfg, runtime=runtime, resume=args.resume, overwrite=args.overwrite,
                        progress=not args.no_progress)
    if not runtime.is_main:
        return  # one process prints (and wrote the run)
    summary = STAGES[args.command].read_summary(run_dir.path)
    print(STAGES[args.command].module.format_summary(summary))
    if dropped(summary):
        from rlhflab.data import describe_dropped

        print(f"data: {describe_dropped(dropped(summary))}")
    print(f"model: {run_dir.model_dir}" if run_dir.model_dir.exists() else f"results: {run_dir.path}")
    from rlhflab.rewards import describe_reads

    crowded = describe_reads((summary.get("reward_reads") if isinstance(summary, dict) else summary.reward_reads) or {})
    if crowded:
        print(f"note: {crowded}. Set reward_fn.text=response to score the responses alone.")


def _score(args: argparse.Namespace) -> None:
    from rlhflab.config import RewardFnConfig, from_dict

    cfg = from_dict(RewardFnConfig, {"source": args.reward, "label": args.label, "output": args.output, "flip": args.flip}, "score")
    from rlhflab.rewards import build_reward

    reward = build_reward(cfg)
    scores = reward([args.prompt] * len(args.texts), args.texts)
    for value, text in zip(scores.tolist(), args.texts):
        print(f"{value:9.4f}  {text}")
    note = reward.reads.note() if reward.reads else None
    if note:  # stderr: stdout stays `value  text` lines
        print(f"note: {note}. The scores then say more about the prompt than about the texts; leave out --prompt "
              f"to score each text alone.", file=sys.stderr)


def _generate(args: argparse.Namespace) -> None:
    import re

    # --models M [M ...] also swallows key=value overrides typed after it; a model spec such as
    # runs/x/ilql@beta=2 is not a dotted key, so it stays a model.
    key = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")
    args.overrides = [*args.overrides, *(m for m in args.models if key.match(m))]
    models = [m for m in args.models if not key.match(m)]
    from rlhflab.config import load_config

    cfg = load_config(args.config, args.overrides)  # before torch loads: config errors are instant
    if args.prompt is not None and args.prompts_file is not None:
        raise RlhfLabError("Pass prompts either with --prompt or with --prompts-file, not both.")
    from rlhflab.data.prompts import read_prompts
    from rlhflab.eval.side_by_side import check_request, format_text, scorers, side_by_side, to_json

    notes: list[str] = []
    groups = None
    if args.prompts_file is not None:
        prompts, groups, notes = read_prompts(args.prompts_file)
    else:
        prompts = list(args.prompt or [])
    max_new = args.max_new_tokens if args.max_new_tokens is not None else cfg.generation.max_new_tokens
    temperature = args.temperature if args.temperature is not None else cfg.evaluate.temperature
    check_request(models, prompts, groups, args.n, args.best_of, max_new, temperature)  # before any model loads
    device_name = args.device or cfg.runtime.device
    reward, judges, reward_notes = scorers(cfg, reward=args.reward, label=args.label, flip=args.flip,
                                           device=device_name, need_reward=args.best_of is not None)
    notes += reward_notes
    result = side_by_side(models, prompts, groups=groups, n=args.n, best_of=args.best_of, reward=reward, judges=judges,
                          max_new_tokens=max_new, temperature=temperature,
                          seed=args.seed if args.seed is not None else cfg.seed, device=device_name,
                          mixed_precision=cfg.runtime.mixed_precision, batch_size=cfg.evaluate.batch_size,
                          progress=sys.stderr.isatty())
    result.notes = notes
    for note in notes:  # after sampling: an error stays the one line on stderr
        print(f"note: {note}", file=sys.stderr)
    print(to_json(result) if args.json else format_text(result))


def _pipeline(args: argparse.Namespace) -> None:
    from rlhflab.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.frontier.points is not None:  # several runs and their figure (configs/frontier.yaml)
        from rlhflab import sweep

        if args.force:
            raise RlhfLabError("--force reruns stages of one run, and this config lists frontier points (runs of their "
                               "own); rerun one with `rlhflab pipeline --config <runs_dir>/<name>/sweep/<point>/point.yaml "
                               "--force STAGE`, or delete its folder.")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RlhfLabError("A config with frontier points runs its runs one after another in processes of their own; "
                               "start it with `rlhflab pipeline`, not under `accelerate launch`.")
        print(sweep.run(args.config, args.overrides, progress=not args.no_progress, frontier=True,
                        echo=lambda line: print(line, flush=True)))
        return
    from rlhflab import pipeline

    report = pipeline.run(cfg, force=args.force, progress=not args.no_progress)
    if _is_main_process():
        print(report)


def _sweep(args: argparse.Namespace) -> None:
    from rlhflab import sweep

    sweep.run(args.config, args.overrides, parallel=args.parallel, progress=not args.no_progress,
              echo=lambda line: print(line, flush=True))


def _compare(args: argparse.Namespace) -> None:
    from rlhflab.eval.compare import compare

    result = compare(args.runs, args.out)
    print(result.text)
    print(result.markdown)  # last line: the path


def _frontier(args: argparse.Namespace) -> None:
    from rlhflab.eval.frontier import frontier

    result = frontier(args.runs, args.out)
    print(result.text)


def _is_main_process() -> bool:
    """Under `accelerate launch` (torchrun) every process runs the command; one of them speaks."""
    return os.environ.get("RANK", "0") == "0"


# How long another process waits for the main one to report a user error before it says it itself.
NON_MAIN_ERROR_WAIT_S = 60.0


def _let_the_main_process_say_it(exc: RlhfLabError) -> None:
    """On a non-main process of a multi-process launch, wait before exiting with a user error.

    torchrun ends every process of the group as soon as one exits non-zero. Every process hits
    the same error at about the same time, but only the main one prints it: were this one to exit
    first, the launcher could kill the main process before its line is out (seen on a busy
    machine). So wait: the launcher ends this process once the main one has printed and exited. An
    error this process alone hit (the main one waits in a collective) is said here after the wait.
    """
    import time

    parent = os.getppid()
    deadline = time.monotonic() + NON_MAIN_ERROR_WAIT_S
    while time.monotonic() < deadline and os.getppid() == parent:  # a new parent: the launcher is gone
        time.sleep(0.05)
    print(f"error (process {os.environ.get('RANK')}): {exc}", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rlhflab.eval.report import build_report

    _refuse_stage_folder(Path(args.run_dir))
    html, markdown = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(markdown)
    print(html)  # last line: scripts take the HTML path with `tail -1`


def _refuse_stage_folder(path) -> None:
    """A folder inside a run (runs/default/rl, runs/default/sft/model, runs/default/report, ...)
    where the run folder (runs/default) goes: name the run folder."""
    from rlhflab.stages.registry import stage_folders

    def is_run(folder) -> bool:
        return any((folder / name).is_dir() for name in stage_folders())

    if not path.is_dir() or is_run(path):
        return  # not a folder (the report says so), or a run folder (whatever its own name)
    run = next((parent for parent in list(path.parents)[:3] if is_run(parent)), None)
    if run is not None:
        raise RlhfLabError(f"{path} is inside the run {run}: pass the run folder, {run} (`rlhflab report {run}`).")


def _config(args: argparse.Namespace) -> None:
    from rlhflab.config import check_runtime, dump_yaml, load_config

    cfg = load_config(args.config, args.overrides)  # every check a stage runs on its settings
    check_runtime(cfg.runtime)  # and what the stages' runtime refuses on this machine
    print(dump_yaml(cfg), end="")


def _human(args: argparse.Namespace) -> None:
    args.handler(args)  # serve / label / rate: each subcommand parser set its handler


COMMANDS = {"pipeline": _pipeline, "sweep": _sweep, "compare": _compare, "frontier": _frontier, "score": _score, "config": _config,
            "report": _report, "generate": _generate}
COMMANDS.update({name: _human for name in ("serve", "label", "rate")})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags and `key=value` overrides in any order (`rlhflab rl --config X --overwrite name=a`)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        overrides = [item for item in extra if "=" in item and not item.startswith("-")]
        args.overrides = [*(args.overrides or []), *overrides]
        extra = [item for item in extra if item not in overrides]
        dashed = next((item for item in extra if _dashed_override(item, argv)), None)
        if dashed is not None:
            # The argparse habit (--sft.epochs=3): say the spelling that works, in one line.
            print(f"error: unrecognized argument {dashed}: config overrides take no dashes; write "
                  f"{_dashed_override(dashed, argv)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _dashed_override(item: str, argv: list[str]) -> str | None:
    """`sft.epochs=3` for `--sft.epochs=3` (or `--sft.epochs 3`) when the key starts with a config
    section or top-level setting; None for anything else."""
    import dataclasses
    import re

    from rlhflab.config import Config

    match = re.fullmatch(r"--?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(=.*)?", item)
    # `ppo` is the old name of the `rl` section and still read as it (config.upgrade_names)
    if not match or match.group(1).split(".")[0] not in {f.name for f in dataclasses.fields(Config)} | {"ppo"}:
        return None
    key, value = match.group(1), match.group(2)
    if value is not None:
        return f"{key}{value}"
    position = argv.index(item)
    following = argv[position + 1] if position + 1 < len(argv) else None
    if following is None or following.startswith("-") or "=" in following:
        return f"{key}=VALUE"
    return f"{key}={following}"


def main(argv: Sequence[str] | None = None) -> int:
    from rlhflab.interrupt import stop_at_once

    try:
        try:
            # From the first moment, not only once a stage starts: SIGTERM would otherwise kill a
            # starting command with status 143 and no word, and a background job would ignore Ctrl-C.
            with stop_at_once():
                return _main(argv)
        finally:  # --help and errors too: a reader that went away fails here, not at interpreter exit
            sys.stdout.flush()
            if "torch.distributed" in sys.modules:  # only a command that loaded torch can have a process group
                from rlhflab.engine.runtime import close_process_group

                close_process_group()
    except KeyboardInterrupt:  # a stop before or after the command's own handling (parsing, imports)
        if _is_main_process():
            print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `rlhflab ... | head -3`: the reader closed the pipe. End quietly, as Unix tools do when
        # SIGPIPE kills them (status 128 + 13); stdout goes to devnull so that the flush at
        # interpreter exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    from rlhflab.malloc import keep_freed_memory

    keep_freed_memory()  # before any model is loaded (see the function for why)
    # Quieter third-party logs: the CLI prints its own progress and results.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars
    try:
        COMMANDS.get(args.command, _stage)(args)  # the rest are the registered stages
    except RlhfLabError as exc:
        if os.environ.get("RLHFLAB_DEBUG") == "1":  # the full traceback, chained causes included
            traceback.print_exc()
        if _is_main_process():  # every process hits the same error; one line says it
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            _let_the_main_process_say_it(exc)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def run_and_exit() -> None:
    """`python -m rlhflab(.cli)`: run, then end the process; under accelerate launch, a command that
    loaded torch ends through runtime.exit_process (a plain exit could abort in gloo's teardown)."""
    code = main()
    if "torch" in sys.modules:  # runtime imports torch: not for commands that never needed it
        from rlhflab.engine.runtime import exit_process

        exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
