"""Error types the command line reports as one clear line (no traceback without ``--verbose``).

``InputError`` is the base of every "your input is wrong" error: a malformed file, record or
path given by the user. Its message names the file (and line, record id or archive member where
there is one) and what is wrong, so the user can fix it without reading a traceback. Subclasses:
``jsonl.JsonlError``, ``data.seed.SeedFormatError``, ``data.web.WebInputError``.
"""

from __future__ import annotations


class InputError(ValueError):
  """Bad user input; the message names the file, line or record and what is wrong."""


class StaleStateError(RuntimeError):
  """A finished stage's recorded inputs or config differ from the current ones and the user
  asked to be told (``--on_change=error``) rather than to rerun it; the message names what
  changed."""


class DiskFullError(OSError):
  """A write failed for lack of space (``ENOSPC``/``EDQUOT``); the message names the file and
  says what was kept. Everything already committed (finished chunks, earlier checkpoints,
  earlier stages) stays valid: free space and rerun to resume."""


def is_disk_full(e: BaseException) -> bool:
  """True for an ``OSError`` (or one it wraps, e.g. inside orbax) of errno ENOSPC or EDQUOT."""
  import errno
  while e is not None:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    e = e.__cause__ or e.__context__
  return False
