"""The registry: architecture name -> :class:`ModelConfig` (builder callable plus frozen facts).

It holds no architecture itself. Each family's data module in :mod:`models.zoo` calls
:func:`register` for its names when ``models`` is imported, so adding a family touches no file here.
"""

from __future__ import annotations

from models.config import Layout, ModelConfig, PublishedCheckpoint

_REGISTRY: dict[str, ModelConfig] = {}


def register(config: ModelConfig) -> ModelConfig:
    """Add ``config`` under its name; a name registered twice is a programming error."""
    if config.name in _REGISTRY:
        raise ValueError(f"architecture {config.name!r} registered twice")
    _REGISTRY[config.name] = config
    return config


def list_families() -> list[str]:
    """Every architecture family with at least one registered name, sorted."""
    return sorted({config.family for config in _REGISTRY.values()})


def list_models(family: str | None = None, *, layout: Layout | None = None) -> list[str]:
    """Registered architecture names, sorted; optionally only one ``family`` and/or ``layout``."""
    if family is not None and family not in list_families():
        raise KeyError(f"unknown architecture family {family!r}; families: {', '.join(list_families())}")
    return sorted(
        name
        for name, config in _REGISTRY.items()
        if (family is None or config.family == family) and (layout is None or config.layout == layout)
    )


def get_model_config(name: str) -> ModelConfig:
    """The frozen config of ``name``; a KeyError lists the registered names when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; registered: {', '.join(list_models())}") from None


def all_configs() -> tuple[ModelConfig, ...]:
    """Every registered config, in name order."""
    return tuple(_REGISTRY[name] for name in list_models())


def all_checkpoints() -> tuple[PublishedCheckpoint, ...]:
    """Every published checkpoint of every architecture."""
    return tuple(checkpoint for config in all_configs() for checkpoint in config.checkpoints)


def head_names() -> tuple[str, ...]:
    """Every classifier name some architecture uses (``fc``, ``linear``, ``head.fc`` ...), longest first.

    Longest first so that ``head.fc.weight`` is recognised as ``head.fc`` and not mistaken for
    another layout's ``fc``.
    """
    return tuple(sorted({config.head_name for config in _REGISTRY.values()}, key=lambda h: (-len(h), h)))
