"""Installed package versions, read from package metadata without importing the packages."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable


def installed_version(dist: str) -> str | None:
    """The installed version of distribution `dist` (e.g. "onnxruntime"), or None if absent."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """{dist: installed version or None} for each of `dists`, in order."""
    return {dist: installed_version(dist) for dist in dists}
