"""The one training engine: a Runtime per process (Accelerate), one Loop, and the Algorithm
protocol that every stage's training implements (rlhflab/algorithms)."""
