"""Files of the lake and of the cube store, local or on an object store, through the pyarrow
filesystem of their handle (warehouse.writer.Lake): listing partitions with their files' sizes and mtimes (what the build manifest compares),
and atomic Parquet writes (warehouse.writer.publish, the one atomic writer: written aside, then
renamed; one PUT on object stores)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from warehouse.writer import parquet_bytes, publish

PartitionKey = tuple[str, ...]  # partition values in partition-column order, dates as YYYY-MM-DD


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime_ns: int


def key_dir(partition_cols: tuple[str, ...], key: PartitionKey) -> str:
    return "/".join(f"{c}={v}" for c, v in zip(partition_cols, key))


def list_partitions(fs: pafs.FileSystem, table_dir: str,
                    partition_cols: tuple[str, ...]) -> dict[PartitionKey, list[FileEntry]]:
    """Every ``*.parquet`` under ``table_dir`` grouped by its hive partition (``()`` when the table has
    no partition columns). Names starting with ``_`` or ``.`` are not data."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(table_dir, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    out: dict[PartitionKey, list[FileEntry]] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = info.path[len(table_dir):].lstrip("/").split("/")
        if any(p.startswith(("_", ".")) for p in rel):
            continue
        values = dict(p.split("=", 1) for p in rel[:-1] if "=" in p)
        if any(c not in values for c in partition_cols) or len(rel) != len(partition_cols) + 1:
            continue
        key = tuple(values[c] for c in partition_cols)
        out.setdefault(key, []).append(FileEntry(info.path, int(info.size), int(info.mtime_ns or 0)))
    for files in out.values():
        files.sort(key=lambda f: f.path)
    return out


def fingerprint(files: list[FileEntry], table_dir: str) -> list:
    return [[f.path[len(table_dir):].lstrip("/"), f.size, f.mtime_ns] for f in files]


def write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, local: bool) -> None:
    """A cube file, by the lake's own atomic writer and Parquet options (warehouse.writer.publish)."""
    publish(fs, path, parquet_bytes(table), local)


def write_text(fs: pafs.FileSystem, path: str, text: str, local: bool) -> None:
    """A small text file (the build manifest), atomically and on disk before it is renamed in."""
    publish(fs, path, lambda f: f.write(text.encode()), local, suffix=".json", durable=True)


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except (FileNotFoundError, OSError):
        pass
