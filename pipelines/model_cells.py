"""The peers underfitting compares a run with, kept between diagnoses: ``model_cells``
(sql/diagnostics/shared/model_cells.sql), every run of a model as the median of its losses in each cell of
a grid over the model's longest run, one file per model under ``<lake>/_checkpoints/model_cells/``.

A diagnose that recomputes runs of a model reads the raw rows of the model's other runs only to cut
them into cells; those rows did not change since the last diagnose (the runs are out of its scope),
and neither did their cells while the grid stays: the grid's width follows the model's longest run.
So a batch takes a model's kept cells instead of its other runs' rows where

- every other run of the model is out of scope (its rows unchanged) and has kept rows, and
- the model's longest run (grid_last_step), over those runs and the batch's own, is the one the kept
  cells were cut on;

and reads them raw otherwise (a full diagnose, a longer run, a run changed in another batch). A file is
trusted only with the token the diagnose manifest records for its model: a diagnose that wrote cells
and died before its manifest leaves files the next one does not use.
"""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.writer import Lake, parquet_bytes

FOLDER = "_checkpoints/model_cells"  # under the lake root: <model>.parquet
SCHEMA = pa.schema([("model", pa.string()), ("run_id", pa.string()), ("grid_last_step", pa.int64()),
                    ("cell_steps", pa.float64()), ("last_step", pa.int64()), ("cell", pa.int64()),
                    ("cell_loss", pa.float64()), ("n_logs", pa.int64())])
TOKEN = b"mhw.model_cells.token"


class ModelCells:
    """The kept cells of one diagnose: read per model as batches ask (``kept``), replaced per model as
    batches compute them (``update``), written with ``save``."""

    def __init__(self, lake: Lake, tokens: dict[str, str] | None):
        self.lake = lake
        self.tokens = dict(tokens or {})  # model -> token of its file, from the last manifest ({}: none trusted)
        self.new: dict[str, pa.Table] = {}
        self.read_models: set[str] = set()  # models whose other runs were read raw (for the log and tests)
        self.kept_models: set[str] = set()

    def _path(self, model: str) -> str:
        return f"{self.lake.root}/{FOLDER}/{model}.parquet"

    def _load(self, model: str) -> pa.Table | None:
        token = self.tokens.get(model)
        if token is None:
            return None
        try:
            with self.lake.fs.open_input_file(self._path(model)) as f:
                found = pq.ParquetFile(f)
                meta = found.schema_arrow.metadata or {}
                if meta.get(TOKEN) != token.encode() or not found.schema_arrow.remove_metadata().equals(SCHEMA):
                    return None
                return found.read()
        except (OSError, ValueError, pa.ArrowException):
            return None

    def kept(self, model: str, others: set[str], batch_last_step: int | None) -> pa.Table | None:
        """The kept cells of ``others`` (the model's runs out of scope, not in the batch), where they
        hold every one of them on the grid the model has now (its longest run, over those runs and the
        batch's, ``batch_last_step``); None where the others must be read raw."""
        table = self._load(model)
        if table is None or not others:
            return None
        table = table.filter(pc.is_in(table["run_id"], pa.array(sorted(others), pa.string())))
        if set(table["run_id"].unique().to_pylist()) != others:
            return None
        steps = [s for s in (pc.max(table["last_step"]).as_py(), batch_last_step) if s is not None]
        grid = table["grid_last_step"].unique().to_pylist()
        if len(grid) != 1 or (max(steps) if steps else None) != grid[0]:
            return None  # the longest run changed: the grid, and every cell with it
        return table

    def update(self, model: str, table: pa.Table) -> None:
        """The model's cells as a batch computed them (every run of it, kept or read)."""
        self.new[model] = table.cast(SCHEMA)

    def save(self) -> dict[str, str]:
        """Write the models' new cells (before the manifest that names their tokens); the tokens for
        the manifest: the kept ones, and the new."""
        for model, table in sorted(self.new.items()):
            token = uuid.uuid4().hex
            data = table.replace_schema_metadata({TOKEN: token.encode()})
            self.lake.put_file(self._path(model), parquet_bytes(data), ".parquet")
            self.tokens[model] = token
        return dict(sorted(self.tokens.items()))


def empty() -> pa.Table:
    return SCHEMA.empty_table()
