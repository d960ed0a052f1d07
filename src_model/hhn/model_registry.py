"""Named models: checkpoints that installed packages publish under a name, without importing torch.

A package publishes a checkpoint in the entry-point group ``hhn.models``: the entry point's name is the
model's name, the object it points at is the path of a checkpoint folder (or of a checkpoint file),
for instance in the package's ``pyproject.toml``::

    [project.entry-points."hhn.models"]
    mymodel = "my_package.models:MYMODEL_DIR"

:func:`register_model` adds a name for the running process only (tests, scripts); it wins over a
published entry point of the same name. :func:`hhn.model_names.resolve_model_name` looks names up here.
"""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from hhn.errors import WeightsNotFoundError

ENTRY_POINT_GROUP = "hhn.models"
_REGISTERED: dict[str, Path] = {}


def register_model(name: str, path: str | os.PathLike) -> None:
    """Name the checkpoint folder (or file) ``path`` ``name`` in this process."""
    _REGISTERED[name] = Path(path).expanduser()


def _published() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_names() -> list[str]:
    """Every registered model name (published or registered in this process), sorted."""
    return sorted({*_REGISTERED, *_published()})


def registered_model(name: str) -> Path | None:
    """The checkpoint folder (or file) registered as ``name``, or None when no model has that name.

    Raises:
        WeightsNotFoundError: the package publishing ``name`` cannot be imported, or its path is absent
            (a broken installation).
    """
    if name in _REGISTERED:
        path = _REGISTERED[name]
        where = "register_model"
    else:
        ep = _published().get(name)
        if ep is None:
            return None
        where = f"{ep.value} (entry point of {ep.dist.name if ep.dist else 'an installed package'})"
        try:
            path = Path(os.fspath(ep.load()))
        except (ImportError, AttributeError, TypeError) as exc:
            raise WeightsNotFoundError(f"model {name!r} is published by {where}, which cannot be loaded "
                                       f"({type(exc).__name__}: {exc}); reinstall that package") from None
    if not path.exists():
        raise WeightsNotFoundError(f"model {name!r} ({where}) points at {path}, which does not exist in this "
                                   "installation; reinstall the package that ships it")
    return path
