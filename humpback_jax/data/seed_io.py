"""Safe reading of seed and evaluation files: every bad input becomes a :class:`SeedFormatError`.

The seed readers (:mod:`humpback_jax.data.seed_formats`) and the evaluation prompt loader
(:mod:`humpback_jax.data.eval_prompts`) read their files through this module, so a user's bad file
never surfaces as a raw ``UnicodeDecodeError``, ``gzip.BadGzipFile``, ``IsADirectoryError``,
``RecursionError`` or a hang (a FIFO where a file is expected). Every error message starts with
the file path and, where there is one, the 1-based line number: ``"<path>: line <n>: <what>"``.

Accepted bytes (our choice):

* UTF-8 only. A UTF-8 byte-order mark at the start of the file is skipped. Any other invalid byte
  is an error naming the line, the byte value and its 1-based byte column within the line.
* Lines end with ``\\n`` or ``\\r\\n`` (the ``\\r`` is JSON whitespace). A blank line is skipped.
* Gzip-compressed content (recognised by its magic bytes ``1f 8b``, whatever the file name, so
  ``.jsonl.gz`` works) is decompressed while reading; corrupt or truncated gzip data is an error.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import json
import os
import pathlib
import stat
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from humpback_jax.errors import InputError

PathLike = str | os.PathLike

# Magic bytes of a gzip member (RFC 1952 §2.3.1).
GZIP_MAGIC = b"\x1f\x8b"


class SeedFormatError(InputError):
  """A seed or evaluation file is malformed (bad JSON, missing or mistyped required field)."""


# Our choice: the extensions dropped from a file name to make its source tag.
_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz")


def default_source(kind: str, path: PathLike) -> str:
  """``"<kind>:<file name without .jsonl/.json/.gz>"``, e.g. ``"oasst:oasst_en_100_trees"``."""
  name = pathlib.Path(path).name
  for suffix in _SUFFIXES:
    if name.endswith(suffix) and len(name) > len(suffix):
      name = name[: -len(suffix)]
      break
  return f"{kind}:{name}"


def check_input_file(path: PathLike, what: str = "input file") -> None:
  """Checks that ``path`` names an existing, regular, readable file (symlinks followed).

  Called before a file is opened, so a directory, a FIFO (which would block ``open``), a device or
  a symlink loop is reported instead of raising or hanging.

  Raises:
    SeedFormatError: the path is missing, a dangling symlink, a symlink loop, a directory, not a
      regular file, or not readable; the message names the path and ``what`` it should be.
  """
  try:
    st = os.stat(path)
  except FileNotFoundError:
    hint = " (dangling symlink)" if os.path.islink(path) else ""
    raise SeedFormatError(f"{path}: {what} does not exist{hint}") from None
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise SeedFormatError(f"{path}: {what} is a symlink loop") from None
    raise SeedFormatError(f"{path}: cannot access {what}: {e.strerror or e}") from None
  if stat.S_ISDIR(st.st_mode):
    raise SeedFormatError(f"{path}: {what} is a directory, expected a file")
  if not stat.S_ISREG(st.st_mode):
    raise SeedFormatError(f"{path}: {what} is not a regular file (a FIFO, socket or device)")
  if not os.access(path, os.R_OK):
    raise SeedFormatError(f"{path}: {what} is not readable (permission denied)")


def _open_binary(path: PathLike) -> BinaryIO:
  """Opens ``path`` for binary reading, transparently decompressing gzip content."""
  f = open(path, "rb")  # noqa: SIM115 - returned to the caller's ``with``.
  try:
    magic = f.read(2)
    f.seek(0)
  except BaseException:
    f.close()
    raise
  if magic == GZIP_MAGIC:
    return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
  return f


def iter_text_lines(path: PathLike) -> Iterator[tuple[int, str]]:
  """Yields ``(1-based line number, decoded line)`` for every line, blank ones included.

  Lines keep their line ending; the BOM of line 1 is removed.

  Raises (while iterating):
    SeedFormatError: the path fails :func:`check_input_file`, a line is not valid UTF-8, the gzip
      data is corrupt or truncated, or reading fails (message names the file, and the line).
  """
  check_input_file(path)
  lineno = 0
  try:
    f = _open_binary(path)
    try:
      for lineno, raw in enumerate(f, start=1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
          raw = raw[len(codecs.BOM_UTF8):]
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise SeedFormatError(
              f"{path}: line {lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte column "
              f"{e.start + 1}); the file must be UTF-8 text") from None
        yield lineno, line
    finally:
      f.close()
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise SeedFormatError(
        f"{path}: line {lineno + 1}: corrupt or truncated gzip data ({e})") from None
  except OSError as e:
    raise SeedFormatError(f"{path}: cannot read: {e.strerror or e}") from None


def parse_json(text: str, path: PathLike, where: str) -> Any:
  """``json.loads(text)`` with every failure turned into a :class:`SeedFormatError`.

  Args:
    text: the JSON text.
    path: the file, for the message.
    where: the location prefix after the path, e.g. ``"line 3: "``; empty for a whole
      document (a syntax error then names the document's line).

  Raises:
    SeedFormatError: malformed JSON (with column), nesting too deep for the parser
      (``RecursionError``), or an out-of-range number (e.g. an integer over Python's digit limit).
  """
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    if where:
      hint = (" (truncated last line? it has no line ending)"
              if not text.endswith("\n") and e.msg != "Extra data" else "")
      raise SeedFormatError(f"{path}: {where}malformed JSON: {e.msg} (column {e.colno}){hint}"
                            ) from None
    raise SeedFormatError(f"{path}: line {e.lineno}: malformed JSON: {e.msg} "
                          f"(column {e.colno})") from None
  except RecursionError:
    raise SeedFormatError(f"{path}: {where}JSON value nested too deeply to parse") from None
  except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion".
    raise SeedFormatError(f"{path}: {where}invalid JSON value: {e}") from None


def iter_json_lines(path: PathLike, *, allow_empty: bool = False
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields ``(1-based line number, object)`` for each non-blank line of a JSONL file.

  Args:
    path: the file.
    allow_empty: if false, a file with no non-blank line is an error.

  Raises (while iterating):
    SeedFormatError: as :func:`iter_text_lines` and :func:`parse_json`; a line that is not a JSON
      object; or, unless ``allow_empty``, a file without any record.
  """
  n = 0
  for lineno, line in iter_text_lines(path):
    if not line.strip():
      continue
    obj = parse_json(line, path, f"line {lineno}: ")
    if not isinstance(obj, dict):
      raise SeedFormatError(
          f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
    n += 1
    yield lineno, obj
  if not n and not allow_empty:
    raise SeedFormatError(f"{path}: file is empty (no JSON records)")


def read_text(path: PathLike) -> str:
  """The whole file as text (UTF-8, BOM removed, gzip decompressed).

  Raises:
    SeedFormatError: as :func:`iter_text_lines`.
  """
  return "".join(line for _, line in iter_text_lines(path))


def get_field(obj: Mapping[str, Any], field: str, types: type | tuple[type, ...], path: PathLike,
              lineno: int, where: str = "", *, required: bool = True, default: Any = None,
              nullable: bool = False) -> Any:
  """Returns ``obj[field]`` after checking presence and type (``bool`` is not an ``int`` here).

  Raises:
    SeedFormatError: the field is missing (and ``required``), null (and neither ``nullable`` nor
      optional), or has the wrong type; the message names file, line and field.
  """
  loc = f"{path}: line {lineno}: {where}"
  types = types if isinstance(types, tuple) else (types,)
  want = " or ".join(t.__name__ for t in types)
  if field not in obj:
    if required:
      raise SeedFormatError(f"{loc}missing required field {field!r}")
    return default
  value = obj[field]
  if value is None:
    if nullable:
      return None
    if not required:
      return default
    raise SeedFormatError(f"{loc}field {field!r} must be {want}, got null")
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
    raise SeedFormatError(f"{loc}field {field!r} must be {want}, got {type(value).__name__}")
  return value


def has_lone_surrogate(*texts: str) -> bool:
  """True if any text holds a lone UTF-16 surrogate (U+D800..U+DFFF, from a JSON ``\\ud800``
  escape): such a string is valid JSON but cannot be written as UTF-8."""
  for t in texts:
    try:
      t.encode("utf-8")
    except UnicodeEncodeError:
      return True
  return False
