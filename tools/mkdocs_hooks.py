"""MkDocs hook (mkdocs.yml ``hooks:``): pages that other work adds join the navigation only once they exist.

``OPTIONAL`` pages are listed in mkdocs.yml's nav; while one is missing from docs/, :func:`on_config`
removes its entry, so ``mkdocs build --strict`` neither fails on the absence nor forgets the page later.
Any other missing page stays in the nav, and the strict build fails on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPTIONAL = {"serve.md", "mpr.md", "training.md", "intended-use.md"}


def _keep(entry: Any, docs: Path) -> bool:
    if isinstance(entry, dict):
        ((_, target),) = entry.items()
        return not (isinstance(target, str) and target in OPTIONAL and not (docs / target).is_file())
    return not (isinstance(entry, str) and entry in OPTIONAL and not (docs / entry).is_file())


def on_config(config: Any, **_: Any) -> Any:
    """Drop the optional pages that do not exist from ``config['nav']``."""
    docs = Path(config["docs_dir"])
    if config.get("nav"):
        config["nav"] = [e for e in config["nav"] if _keep(e, docs)]
    return config
