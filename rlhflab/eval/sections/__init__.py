"""What the report shows of each stage, one module per stage: its section (`section(stage,
run_root, figures) -> blocks`), its rows in the overview's headline table (`rows(summary, name)`)
and its one line in the pipeline (`line(summary)`). rlhflab/stages/registry.py names them;
rlhflab/eval/report.py puts the sections on the page. `base` holds what they share.

These read only the run folder (the DESIGN.md contract) and never import torch.
"""
