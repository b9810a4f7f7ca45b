"""Reward functions passed to `rlhflab.train` in memory live here while it runs, so the stages can
load them by name ("rlhflab._api_rewards:fn_...") like any module:function reward."""
