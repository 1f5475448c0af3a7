"""Registry data, one module per architecture family; importing this package registers every name.

Each module here states its family's facts (names, builder arguments, parameter counts, published
checkpoints) and calls :func:`models.registry.register`. Modules are found by listing the package,
so a new family is its architecture module plus one data module here, and no other file changes.
"""

from __future__ import annotations

import importlib
import pkgutil

FAMILY_MODULES: tuple[str, ...] = tuple(
    sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
)

for _module in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
