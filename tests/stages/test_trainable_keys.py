"""A block index the model does not have is refused in one line naming the key to set:
sft.trainable, dpo.trainable and ilql.trainable (one helper trains the three), rl.trainable."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from rlhflab.config import Config, DataConfig, DpoConfig, IlqlConfig, PairsConfig, RewardFnConfig, SftConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.policy import build_policy
from rlhflab.stages.common import run_stage
from tests.helpers import FP32

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


def _config(tmp_path, reviews_csv, **section) -> Config:
    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_FILE)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(reviews_csv), per_class=30),
                  reward_fn=RewardFnConfig(source=f"{reward}:e_share"), **section)


@pytest.mark.parametrize("stage", ["sft", "dpo", "ilql"])
def test_a_supervised_stage_names_its_own_trainable_key(stage, tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl):
    model = str(tiny_llama_dir)  # 4 blocks
    section = {
        "sft": lambda: SftConfig(model=model, trainable=[-1, 9]),
        "dpo": lambda: DpoConfig(policy=model, trainable=[9], eval_prompts=2, eval_batch_size=2,
                                 pairs=PairsConfig(source=str(pairs_jsonl), fractions=[0.8, 0.2, 0.0])),
        "ilql": lambda: IlqlConfig(policy=model, trainable=[9], eval_prompts=2, eval_batch_size=2, max_length=24),
    }[stage]()
    with pytest.raises(RlhfLabError, match=rf"^{stage}\.trainable: block index 9 is out of range: the model has 4 blocks"):
        run_stage(stage, _config(tmp_path, reviews_csv, **{stage: section}), progress=False)


def test_the_rl_policy_names_rl_trainable(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(RlhfLabError, match=r"^rl\.trainable: block index -5 is out of range"):
        build_policy(model, [-5])
