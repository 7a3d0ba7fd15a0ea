"""Files of the lake and of the cube store, local or on an object store, through one pyarrow
filesystem: listing partitions with their files' sizes and mtimes (what the build manifest compares),
and atomic Parquet writes (written aside, then renamed; one PUT on object stores)."""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PartitionKey = tuple[str, ...]  # partition values in partition-column order, dates as YYYY-MM-DD


def resolve(root: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path inside it, is_local) for a local folder or an object-store URI."""
    root = str(root)
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/"), False
    return pafs.LocalFileSystem(), os.path.abspath(root), True


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
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not local:  # one PUT is atomic by the store's own rules
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        return
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(fs: pafs.FileSystem, path: str, text: str, local: bool) -> None:
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not local:
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
        return
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
