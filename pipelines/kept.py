"""Summaries of runs kept between diagnoses: the rows a shared model (sql/diagnostics/shared/) computed for
every run of a model, one file per model under ``<lake>/_checkpoints/<model name>/<model>.parquet``.

The rules that compare a run with the other runs of its model (underfitting's peers, the per-run
throughput of throughput_regression) read every run of the model; a diagnose after an appended block
has only the block's runs to read. A run out of the diagnose's scope did not change since the last
diagnose, and neither did its summary (``model_cells`` also needs the same grid, checked by
``on_grid``), so a model's summaries are kept and only the changed runs read raw where

- every other run of the model has a kept row (``runs``: all or nothing per model), and
- the file was written by the diagnose the manifest names: each file carries a token, the manifest
  keeps each model's; a diagnose that wrote summaries and died before its manifest leaves files the
  next one does not trust.

A full diagnose trusts none and writes all.
"""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.writer import Lake, parquet_bytes

FOLDER = "_checkpoints"  # under the lake root: <name>/<model>.parquet
TOKEN = b"mhw.kept.token"
# the shared models kept, and the columns of their rows (a run without a row of its own has one with
# its summary columns null: a run that is there but has nothing to summarize is known, not missing)
KEPT = {
    "model_cells": pa.schema([
        ("model", pa.string()), ("run_id", pa.string()), ("grid_last_step", pa.int64()),
        ("cell_steps", pa.float64()), ("last_step", pa.int64()), ("cell", pa.int64()),
        ("cell_loss", pa.float64()), ("n_logs", pa.int64())]),
    "run_throughput": pa.schema([
        ("model", pa.string()), ("hardware", pa.string()), ("run_id", pa.string()), ("precision", pa.string()),
        ("date", pa.date32()), ("first_ts", pa.timestamp("us", tz="UTC")), ("last_ts", pa.timestamp("us", tz="UTC")),
        ("tps", pa.float64()), ("run_mfu", pa.float64()), ("n_steps", pa.int64())]),
}


class Kept:
    """One shared model's kept rows in one diagnose: read per model (``runs``), replaced per model as
    the diagnose computes them (``update``), written with ``save`` before the manifest."""

    def __init__(self, lake: Lake, name: str, tokens: dict[str, str] | None):
        self.lake, self.name, self.schema = lake, name, KEPT[name]
        self.tokens = dict(tokens or {})  # model -> token of its file, from the last manifest ({}: none trusted)
        self.new: dict[str, pa.Table] = {}
        self.kept_models: set[str] = set()  # models whose other runs came from here (the log, the tests)
        self.read_models: set[str] = set()  # models whose runs were all read raw

    def _path(self, model: str) -> str:
        return f"{self.lake.root}/{FOLDER}/{self.name}/{model}.parquet"

    def _load(self, model: str) -> pa.Table | None:
        token = self.tokens.get(model)
        if token is None:
            return None
        try:
            with self.lake.fs.open_input_file(self._path(model)) as f:
                found = pq.ParquetFile(f)
                if (found.schema_arrow.metadata or {}).get(TOKEN) != token.encode() \
                        or not found.schema_arrow.remove_metadata().equals(self.schema):
                    return None
                return found.read()
        except (OSError, ValueError, pa.ArrowException):
            return None

    def runs(self, model: str, others: set[str]) -> pa.Table | None:
        """The kept rows of ``others`` (runs of ``model`` not read this time), where every one of them
        has some; None where they must be read raw."""
        table = self._load(model)
        if table is None:
            return None
        table = table.filter(pc.is_in(table["run_id"], pa.array(sorted(others), pa.string())))
        return table if set(table["run_id"].unique().to_pylist()) == others else None

    def empty(self) -> pa.Table:
        return self.schema.empty_table()

    def update(self, model: str, table: pa.Table) -> None:
        """The model's rows as this diagnose computed them (every run of it, kept or read)."""
        self.new[model] = table.cast(self.schema)

    def save(self) -> dict[str, str]:
        """Write the models' new rows; the tokens for the manifest: the kept ones, and the new."""
        for model, table in sorted(self.new.items()):
            token = uuid.uuid4().hex
            self.lake.put_file(self._path(model), parquet_bytes(table.replace_schema_metadata({TOKEN: token.encode()})),
                               ".parquet")
            self.tokens[model] = token
        return dict(sorted(self.tokens.items()))

    def said(self) -> str | None:
        if not (self.kept_models or self.read_models):
            return None
        return (f"{self.name}: kept rows of {sorted(self.kept_models)}, raw rows of "
                f"{sorted(self.read_models - self.kept_models)}")


def on_grid(cells: pa.Table, batch_last_step: int | None) -> bool:
    """Whether kept ``model_cells`` rows of a model were cut on the grid it has now: its longest run
    (the kept runs' and the batch's, ``batch_last_step``) is the one they were cut on."""
    steps = [s for s in (pc.max(cells["last_step"]).as_py(), batch_last_step) if s is not None]
    grid = cells["grid_last_step"].unique().to_pylist()
    return len(grid) == 1 and (max(steps) if steps else None) == grid[0]
