"""Custom import-linter contract: which packages may use which parts of the native core.

import-linter sees imports between Python modules; ``fastml._core`` is a compiled extension whose
classes belong to different components (the batcher, the feature cache). ARCHITECTURE.md makes
``engine`` the only user of the batcher and ``features`` the only user of the feature cache, so this
contract reads each module's source and checks the ``_core`` names it touches, not just the import.

Configured in pyproject.toml (``[[tool.importlinter.contracts]]`` with ``type = "native_core"``);
``lint-imports`` puts the repository root on ``sys.path``, which makes this module importable as
``scripts.import_contracts``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def _module_file(module: str) -> Path | None:
    """Source file of ``module`` without importing it (the root package is located, not executed)."""
    root, *rest = module.split(".")
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)), *rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def core_names_used(source: str, native_module: str) -> set[str] | None:
    """Names of ``native_module`` that ``source`` uses; None when it does not import the module at all.

    ``"*"`` in the result means the module object itself escapes (passed on, or accessed dynamically),
    so its use cannot be narrowed to names.
    """
    package, _, leaf = native_module.rpartition(".")
    tree = ast.parse(source)
    aliases: set[str] = set()
    names: set[str] = set()
    imported = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == native_module:
                imported = True
                names.update(a.name for a in node.names)
            elif node.module == package:
                for a in node.names:
                    if a.name == leaf:
                        imported = True
                        aliases.add(a.asname or leaf)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == native_module:
                    imported = True
                    # "import fastml._core" binds "fastml"; "import fastml._core as c" binds "c".
                    aliases.add(a.asname or native_module)
    if not imported:
        return None
    dotted = {a for a in aliases if "." in a}
    plain = aliases - dotted
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in plain:
                names.add(node.attr)
            elif ast.unparse(node.value) in dotted:
                names.add(node.attr)
    # A bare use of an alias (not under an attribute) lets the whole module escape.
    attribute_bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in plain and id(node) not in attribute_bases:
            if isinstance(node.ctx, ast.Load):
                names.add("*")
    return names


class NativeCoreContract(Contract):
    """Only the listed packages use ``native_module``, and each only the names listed for it.

    Configuration options:

        - native_module: the extension module (default ``fastml._core``).
        - users: entries ``"package: Name Name ..."``; a module belongs to the longest listed package
          that contains it.
    """

    type_name = "native_core"

    native_module = fields.StringField(default="fastml._core")
    users = fields.ListField(subfield=fields.StringField())

    def _allowed(self) -> dict[str, set[str]]:
        allowed: dict[str, set[str]] = {}
        for entry in self.users:  # type: ignore[attr-defined]
            package, _, names = str(entry).partition(":")
            allowed[package.strip()] = set(names.split())
        return allowed

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        allowed = self._allowed()
        native = str(self.native_module)
        violations: list[str] = []
        for module in sorted(graph.modules):
            path = _module_file(module)
            if path is None:
                continue
            used = core_names_used(path.read_text(encoding="utf-8"), native)
            if used is None:
                continue
            owners = [p for p in allowed if module == p or module.startswith(p + ".")]
            if not owners:
                violations.append(f"{module} imports {native} (only {', '.join(sorted(allowed))} may)")
                continue
            permitted = allowed[max(owners, key=len)]
            extra = sorted(used - permitted)
            if extra:
                violations.append(
                    f"{module} uses {native}.{{{', '.join(extra)}}}, which belongs to another "
                    f"package (allowed here: {', '.join(sorted(permitted))})"
                )
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["violations"]:
            output.print_error(f"- {line}", bold=False)
            output.new_line()
