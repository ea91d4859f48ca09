"""`pip install fastml[train]` is enough for `fastml train`: every library the pipeline imports is declared
by the core dependencies or the train extra (directly or through what they require)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Model families a user opts into by name (`model.family = "xgboost"`); their library is theirs to install,
# and the family's error says so.
OPT_IN_FAMILIES = {"xgboost", "lightgbm"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> tuple[str, str | None]:
    """(distribution, extra) of a requirement string like ``fastml[train]`` or ``rich>=13``."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[([^\]]+)\])?", req)
    return _canon(m.group(1)), m.group(2)


def _declared_for_train() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    todo = list(project["dependencies"]) + list(extras["train"])
    names: set[str] = set()
    while todo:
        name, extra = _req_name(todo.pop())
        if name == "fastml":
            todo += extras[extra] if extra else []
            continue
        if name in names:
            continue
        names.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        # What a declared distribution needs (without its own extras) is installed with it.
        todo += [r for r in requires if "extra ==" not in r]
    return names


def _pipeline_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src" / "fastml" / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top != "fastml" and top not in sys.stdlib_module_names and top not in OPT_IN_FAMILIES:
                    found.setdefault(top, set()).add(path.name)
    return found


def test_rich_comes_with_the_train_extra():
    assert "rich" in _declared_for_train()


def test_every_library_the_pipeline_imports_is_installed_by_the_train_extra():
    declared = _declared_for_train()
    providers = metadata.packages_distributions()
    missing = {}
    for module, files in _pipeline_imports().items():
        dists = {_canon(d) for d in providers.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(files)
    assert missing == {}, f"imported by fastml.pipeline but not installed by fastml[train]: {missing}"
