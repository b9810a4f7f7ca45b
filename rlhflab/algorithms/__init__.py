"""What the stages train, as Algorithms driven by the one loop (rlhflab/engine/loop.py):
supervised (SFT, reward model) and online RL assembled from parts (PPO, GRPO, RLOO)."""
