"""The output folder: one part file per batch, each written whole or not at all, and the run's settings.

Layout of `OUT/` (everything but the parts starts with `_`, which Parquet readers such as
`pandas.read_parquet(OUT)` and pyarrow's datasets skip, so the folder reads as one table):
    _spa-batch.json         model and options the rows were made with (a rerun must match them)
    part-<uuid>.parquet     rows of one batch (or .jsonl: one JSON object per line)
    _heatmaps/              PNGs, when asked
    _coco.json              when asked, rebuilt from every part at the end of each run

A part is written to a hidden temporary name and renamed into place, so a killed run leaves
whole parts only, and a rerun reads back which paths are done from the parts alone.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .rows import ROW_SCHEMA, Row

OutputFormat = Literal["parquet", "jsonl"]
RUN_FILE = "_spa-batch.json"
COCO_FILE = "_coco.json"
_SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}
_TEMP_PREFIX = ".tmp-part-"


def read_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """Without pre-buffering: its read-ahead runs on pyarrow's IO threads, which may release their hold
    on `data` during interpreter exit and abort the process (seen here about 1 run in 10)."""
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(columns=columns, use_threads=False)


class OutputMismatchError(ValueError):
    """An output folder that holds rows made with other settings than this run's."""


class Store:
    def __init__(self, out: str, fmt: OutputFormat) -> None:
        self.fs, self.root = url_to_fs(out)
        self.fmt = fmt

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def open_run(self, settings: dict[str, Any]) -> None:
        """Create the folder, or check that the rows already in it were made with `settings`; drop
        temporary parts a killed run left behind."""
        self.fs.makedirs(self.root, exist_ok=True)
        run_file = self._path(RUN_FILE)
        if self.fs.exists(run_file):
            before = json.loads(self.fs.cat_file(run_file))
            if before != settings:
                changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
                raise OutputMismatchError(
                    f"{self.root} holds rows made with other settings ({', '.join(changed)} differ: "
                    f"{ {k: before.get(k) for k in changed} } there, { {k: settings.get(k) for k in changed} } now); "
                    "use another --out, or the same options to resume"
                )
        else:
            self._write_atomic(RUN_FILE, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
        for name in self.fs.ls(self.root, detail=False):
            if posixpath.basename(name).startswith(_TEMP_PREFIX):
                self.fs.rm(name)

    def _write_atomic(self, name: str, data: bytes) -> None:
        temp = self._path(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        with self.fs.open(temp, "wb") as f:
            f.write(data)
        self.fs.mv(temp, self._path(name))

    def write_part(self, table: pa.Table) -> str:
        """Write one batch's rows as a new part file; returns its name."""
        name = f"part-{uuid.uuid4().hex}{_SUFFIX[self.fmt]}"
        if self.fmt == "parquet":
            buffer = io.BytesIO()
            pq.write_table(table.cast(ROW_SCHEMA), buffer)
            data = buffer.getvalue()
        else:
            data = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in table.to_pylist()).encode()
        self._write_atomic(name, data)
        return name

    def write_file(self, name: str, data: bytes) -> None:
        self._write_atomic(name, data)

    def parts(self) -> list[str]:
        suffix = _SUFFIX[self.fmt]
        names = self.fs.ls(self.root, detail=False) if self.fs.isdir(self.root) else []
        return sorted(n for n in names if posixpath.basename(n).startswith("part-") and n.endswith(suffix))

    def _read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        data = self.fs.cat_file(name)
        if self.fmt == "parquet":
            table = read_parquet(data, columns)
            return table.cast(ROW_SCHEMA if columns is None else pa.schema([ROW_SCHEMA.field(c) for c in columns]))
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
        return table.select(columns) if columns else table

    def done(self) -> dict[str, str | None]:
        """Each path that already has a row -> its error code (None: localized)."""
        done: dict[str, str | None] = {}
        for name in self.parts():
            part = self._read_part(name, ["path", "error_code"])
            done.update(zip(part.column("path").to_pylist(), part.column("error_code").to_pylist()))
        return done

    def rows(self) -> Iterator[Row]:
        for name in self.parts():
            yield from self._read_part(name).to_pylist()
