"""ARCHITECTURE.md's picture holds: rlhflab's module-level imports point down its layers, form no
cycle, and the declarations the CLI and config read load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# torch-free tables everything may read: the stage list and the RL algorithm list
DECLARATIONS = ("rlhflab.stages.registry", "rlhflab.algorithms.recipes")
# bottom first; a unit is a subpackage or top-level module of rlhflab (or a declaration above)
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "summaries", "io", "interrupt", "malloc", "fingerprint", "tracking", "assets", "checkpoint",
                    "config",
                    *DECLARATIONS}),
    ("parts", {"data", "ops", "models", "rewards", "_api_rewards", "rollout", "vllm_rollout", "eval"}),
    ("training", {"engine", "algorithms"}),
    ("stages", {"stages"}),
    ("entry points", {"cli", "api", "pipeline", "sweep", "human", "__main__", "__init__"}),
]
LEVEL = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def unit(module: str) -> str:
    """The layer unit of a module name: a declaration, else its subpackage or top-level module."""
    for declaration in DECLARATIONS:
        if module == declaration or module.startswith(declaration + "."):
            return declaration
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "rlhflab").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports() -> list[tuple[str, str, bool]]:
    """(importer, imported module, at module level) for every rlhflab import in rlhflab/."""
    known = modules()
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rlhflab"):
                target = next((f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known),
                              node.module)
            elif isinstance(node, ast.Import):
                target = next((a.name for a in node.names if a.name.startswith("rlhflab")), None)
            else:
                continue
            if target:
                found.append((name, target, id(node) in top))
    return found


def test_every_module_has_a_layer():
    assert {unit(name) for name in modules()} <= set(LEVEL), "place the new package in LAYERS and ARCHITECTURE.md"


def test_module_level_imports_point_down():
    up = [f"{a} -> {b}" for a, b, top in imports() if top and LEVEL[unit(b)] > LEVEL[unit(a)]]
    assert not up, up


def test_there_are_imports_to_check():
    """The measurement itself works: it sees the stages reading the engine, models and config."""
    between = Counter((LAYERS[LEVEL[unit(a)]][0], LAYERS[LEVEL[unit(b)]][0]) for a, b, top in imports() if top)
    assert between[("stages", "training")] > 5 and between[("stages", "parts")] > 5
    assert between[("parts", "foundation")] > 5


def test_no_module_level_import_cycles():
    known = modules()
    graph: dict[str, set[str]] = {}
    for a, b, top in imports():
        if top and a != b:
            graph.setdefault(a, set()).add(b if b in known else b.rsplit(".", 1)[0])
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_declarations_and_the_cli_parser_load_no_torch():
    code = ("import sys, rlhflab, rlhflab.config, rlhflab.stages.registry, rlhflab.algorithms.recipes, rlhflab.cli; "
            "rlhflab.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
