"""Where the real inputs live.

The data root defaults to ``../shared/data`` beside the repository checkout (the layout of CI and
every development machine); ``HUMPBACK_DATA_ROOT`` or the gin-bound ``data_root`` of a stage
config overrides it. Nothing here downloads.
"""

from __future__ import annotations

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_data_root() -> pathlib.Path:
  """``$HUMPBACK_DATA_ROOT`` if set, else ``<repo>/../shared/data``."""
  env = os.environ.get("HUMPBACK_DATA_ROOT")
  return pathlib.Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def resolve(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> pathlib.Path:
  """Resolves ``path``: absolute paths as given, relative ones under the data root."""
  p = pathlib.Path(path)
  if p.is_absolute():
    return p
  return pathlib.Path(data_root) / p if data_root else default_data_root() / p
