"""Files sam-bridge ships beside its code (presets, the ReaScripts, the Live device): found as package data
when installed, else in the checkout's own folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_dir(package: str, checkout_folder: str) -> Path:
    """The folder of `package`'s data (e.g. `bridge.presets_builtin`), else `checkout_folder` of a checkout."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        root = None
    if isinstance(root, Path) and root.is_dir():
        return root
    if root is not None:  # a package without __init__.py is a MultiplexedPath of real folders
        for child in root.iterdir():
            if isinstance(child, Path):
                return child.parent
    return CHECKOUT / checkout_folder
