"""What changed in the lake since a consumer last ran: the one change log ``mhw build`` and ``mhw
diagnose`` share.

A consumer (the cube build, the diagnose) lists the lake once per run, under the snapshot it reads
(``Lake.snapshot``: the files as of one instant, hard links taken under the lake lock), and compares each
partition's files -- name, size, mtime -- with what it recorded after its own last run: a partition is
changed when its files differ, when it is new, or when it is gone. The consumer then records what it
read, so the next run sees only what changed after this one. Each consumer keeps its own record (the
build in its cube store, the diagnose in the lake): they run at different times, on different
snapshots, and a consumer must never skip a change it did not itself read.

    listing = Listing(lake, snapshot_root, ["train_steps", "eval_results"])
    changed = listing.changed("train_steps", recorded)     # keys of changed partitions (gone ones too)
    record = listing.record("train_steps")                 # what to keep for the next run

Listing cost: one recursive listing per table (the files exist); what a consumer recomputes follows
``changed``.
"""
from __future__ import annotations

from pipelines import lakefiles
from pipelines.lakefiles import FileEntry, PartitionKey
from warehouse.schemas import TABLES

Record = dict[str, list]  # partition folder (``model=m/hardware=h/date=d``) -> its files' fingerprint


class Listing:
    """The partitions of some lake tables, with their files, as of one snapshot."""

    def __init__(self, lake, root: str, tables):
        self.lake, self.root = lake, root
        self.partitions: dict[str, dict[PartitionKey, list[FileEntry]]] = {}
        self._prints: dict[str, Record] = {}
        for table in tables:
            self.add(table)

    def add(self, table: str) -> dict[PartitionKey, list[FileEntry]]:
        """List ``table`` (once)."""
        if table not in self.partitions:
            cols = TABLES[table].partition_by
            self.partitions[table] = lakefiles.list_partitions(self.lake.fs, self.table_dir(table), cols)
            self._prints[table] = {lakefiles.key_dir(cols, k): lakefiles.fingerprint(v, self.table_dir(table))
                                   for k, v in self.partitions[table].items()}
        return self.partitions[table]

    def table_dir(self, table: str) -> str:
        return f"{self.root}/{table}"

    def record(self, table: str) -> Record:
        """What a consumer keeps of ``table`` after reading this listing."""
        return self._prints[table]

    def changed(self, table: str, recorded: Record | None) -> set[PartitionKey]:
        """The partitions of ``table`` that differ from ``recorded`` (a consumer's record of its last run;
        None or empty: everything), including partitions that are gone since."""
        recorded = recorded or {}
        now = self._prints[table]
        return {key_of(kd) for kd in set(now) | set(recorded) if now.get(kd) != recorded.get(kd)}

    def changed_files(self, table: str, recorded: Record | None) -> dict[PartitionKey, tuple[list[FileEntry], set[str]]]:
        """Per changed partition: its files that are new or changed since ``recorded``, and the names
        (paths under the table) of the recorded files that are gone or changed. A consumer whose cost
        should follow the changed files, not the changed partitions, reads only the former."""
        recorded = recorded or {}
        out = {}
        for key in self.changed(table, recorded):
            kd = lakefiles.key_dir(TABLES[table].partition_by, key)
            before = {tuple(f) for f in recorded.get(kd, [])}
            entries = self.partitions[table].get(key, [])
            now = {tuple(f): e for f, e in zip(self._prints[table].get(kd, []), entries)}
            out[key] = ([e for f, e in now.items() if f not in before], {f[0] for f in before - set(now)})
        return out

    def files(self, table: str, keys=None) -> list[str]:
        """The paths of ``table``'s files, of the partitions in ``keys`` (all when None)."""
        parts = self.partitions[table]
        return [f.path for k in sorted(parts) if keys is None or k in keys for f in parts[k]]


def key_of(kd: str) -> PartitionKey:
    """``model=m/hardware=h/date=d`` -> ("m", "h", "d")."""
    return tuple(p.split("=", 1)[1] for p in kd.split("/"))
