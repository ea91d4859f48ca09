"""Lazily resolved public names for packages whose implementations import heavy libraries.

``import fastml`` and ``fastml <group> --help`` stay cheap because a package's ``__init__`` only lists its
public names; each is imported from its module on first attribute access and then cached in the
package namespace.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict, *, submodules: bool = False
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's dotted name (for error messages and submodule imports).
        exports: public name -> ``"module"`` or ``"module:attribute"`` (when the attribute is named
            differently there); a name equal to the module's last component exports the module itself.
        namespace: the package's ``globals()``, where resolved names are cached.
        submodules: also resolve other names as submodules (``package.name``).
    """

    def __getattr__(name: str):
        target = exports.get(name)
        if target is None:
            if submodules:
                try:
                    return importlib.import_module(f"{package}.{name}")
                except ModuleNotFoundError:
                    pass  # fall through to the AttributeError a missing name should raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        mod = importlib.import_module(module)
        value = mod if not attribute and module.rsplit(".", 1)[-1] == name else getattr(mod, attribute or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
