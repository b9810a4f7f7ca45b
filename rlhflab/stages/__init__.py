"""Pipeline stages: each `run(cfg, ...)` writes one run directory."""
