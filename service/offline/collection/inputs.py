"""What to localize: the image paths of a folder tree or of a manifest, and reading their bytes.

A source is a local path or an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`). A
folder is walked for image files; a manifest lists paths: `.txt` one per line (blank lines and
`#` comments skipped), `.csv` and `.parquet` in a column named `path`. Relative paths in a manifest
are relative to the manifest's own folder.
"""

from __future__ import annotations

import csv
import io
import posixpath

import fsspec
from fsspec.core import url_to_fs
from spa_service.errors import SpaError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".parquet"})
PATH_COLUMN = "path"


class SourceError(ValueError):
    """A source that is neither a folder nor a manifest spa-batch can read."""


class UnreadableFileError(SpaError):
    """A listed image whose bytes could not be read (missing file, no permission, storage error)."""

    code = "unreadable_file"


def _is_url(path: str) -> bool:
    return "://" in path


def _join(base: str, path: str) -> str:
    """`path` as listed in a manifest in folder `base`: URLs and absolute paths as they are."""
    if _is_url(path) or path.startswith("/"):
        return path
    if _is_url(base):  # normpath would fold the URL's '//'
        return base.rstrip("/") + "/" + path
    return posixpath.normpath(posixpath.join(base, path))


def _protocol_prefix(source: str) -> str:
    return source.split("://", 1)[0] + "://" if _is_url(source) else ""


def list_folder(source: str) -> list[str]:
    """Every image file under the folder `source`, recursively, sorted."""
    fs, root = url_to_fs(source)
    prefix = _protocol_prefix(source)
    found = (p for p in fs.find(root) if posixpath.splitext(p)[1].lower() in IMAGE_SUFFIXES)
    return sorted(prefix + p if prefix and "://" not in p else p for p in found)


def _manifest_paths(name: str, data: bytes) -> list[str]:
    suffix = posixpath.splitext(name)[1].lower()
    if suffix == ".txt":
        lines = (line.strip() for line in data.decode("utf-8").splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
        if PATH_COLUMN not in (reader.fieldnames or []):
            raise SourceError(f"{name}: a CSV manifest needs a {PATH_COLUMN!r} column, found {reader.fieldnames}")
        return [row[PATH_COLUMN].strip() for row in reader if row[PATH_COLUMN].strip()]
    from .store import read_parquet

    table = read_parquet(data)
    if PATH_COLUMN not in table.column_names:
        raise SourceError(f"{name}: a Parquet manifest needs a {PATH_COLUMN!r} column, found {table.column_names}")
    return [p for p in table.column(PATH_COLUMN).to_pylist() if p]


def list_inputs(source: str) -> list[str]:
    """The image paths `source` names, in manifest order (a folder: sorted), without repeats.

    Raises SourceError when `source` does not exist or is a file that is not a manifest.
    """
    fs, root = url_to_fs(source)
    if fs.isdir(root):
        return list_folder(source)
    if not fs.isfile(root):
        raise SourceError(f"{source} does not exist")
    suffix = posixpath.splitext(root)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise SourceError(f"{source} is not a folder or a manifest ({', '.join(sorted(MANIFEST_SUFFIXES))})")
    base = _protocol_prefix(source) + posixpath.dirname(root)
    try:
        paths = _manifest_paths(source, fs.cat_file(root))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{source}: cannot read the manifest ({exc})") from None
    return list(dict.fromkeys(_join(base, p) for p in paths))


def read_bytes(path: str) -> bytes:
    """The file's bytes; UnreadableFileError naming the path and the reason when they cannot be read."""
    try:
        if _is_url(path):
            with fsspec.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UnreadableFileError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
