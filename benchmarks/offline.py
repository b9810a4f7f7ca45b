"""DPO and ILQL throughput and memory on this machine, through the same stages as `rlhflab dpo` / `rlhflab ilql`.

    python benchmarks/offline.py [--policy smollm2-135m] [--prompts 64] [--steps 20] [--batch 16] [--precision auto|bf16|no]

DPO samples 4 responses for each of `--prompts` training prompts from the policy (ranked by a
cheap character-count reward: throughput does not depend on what the reward has learned), then
takes `--steps` optimizer steps over the pairs; ILQL takes `--steps` steps over bundled IMDB
reviews. Prints each stage's wall time, the pair-sampling and training rates, and peak memory
(from the stages' own summaries); not a pass/fail test. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rlhflab.config import load_config
from rlhflab.io import read_json
from rlhflab.stages.common import run_stage

REWARD = "def e_share(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64, help="DPO: training prompts, 4 samples each")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each stage")
    parser.add_argument("--batch", type=int, default=16, help="pairs (DPO) or texts (ILQL) per step")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "no"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "reward.py").write_text(REWARD)
        cfg = load_config(None, [
            f"runs_dir={tmp}", "name=bench", f"runtime.mixed_precision={args.precision}", "data.per_class=400",
            f"reward_fn.source={tmp}/reward.py:e_share", f"dpo.policy={args.policy}", f"ilql.policy={args.policy}",
            f"dpo.on_policy.prompts={args.prompts}", f"dpo.max_steps={args.steps}", f"ilql.max_steps={args.steps}",
            f"dpo.batch_size={args.batch}", f"ilql.batch_size={args.batch}", "dpo.eval_prompts=16", "ilql.eval_prompts=16",
            "dpo.epochs=100", "ilql.epochs=100", "dpo.early_stopping_patience=1000", "ilql.early_stopping_patience=1000", "ilql.eval_betas=[0.0]", "ilql.beta=0.0"])  # max_steps bounds both
        print(f"policy {args.policy}, precision {args.precision}, {args.steps} steps of {args.batch}")
        for stage in ("dpo", "ilql"):
            s = read_json(run_stage(stage, cfg, progress=False).summary_path)
            rate = (f"{s['train_pairs_per_s']:.1f} pairs/s" if stage == "dpo" else f"{s['train_tokens_per_s']:.0f} tokens/s")
            extra = f", {s['pairs']['train']} training pairs sampled" if stage == "dpo" else ""
            print(f"{stage:<5} {s['seconds']:7.1f} s in all (frozen-block cache {s['frozen_cache']['seconds']:.1f} s), "
                  f"training {rate}, peak {s['peak_memory_mb']:.0f} MB, {s['steps']} steps{extra}")


if __name__ == "__main__":
    main()
