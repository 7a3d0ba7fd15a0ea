"""A JSON line's shape (warehouse/jsonl_shapes.py): which lines json.loads vouches for, with which keys
and value kinds, and the head the columns parse a line from. The lake-level proof that lines of one
shape are read as the row path reads them is tests/warehouse/test_ingest_columns.py."""
import json

import pytest

from warehouse.ingest import _fills
from warehouse.jsonl_shapes import SHAPE_CUT, Shape, head
from warehouse.schemas import TABLES

STEP = {"table": "train_steps", "run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu-x1", "step": 3,
        "ts": "2026-11-01T10:00:00Z", "loss": 2.5}


def shape(line, default=None, **flags):
    return Shape.of((line if isinstance(line, str) else json.dumps(line)).encode(), default, _fills(flags or None))


def test_a_good_line_gives_its_table_keys_and_kinds():
    s = shape({**STEP, "lr": 1e-05, "grad_norm": float("nan"), "epoch": None})
    assert (s.table, s.named) == ("train_steps", True)
    assert s.keys == ("table", "run_id", "model", "hardware", "step", "ts", "loss", "lr", "grad_norm", "epoch")
    assert dict(s.kinds) == {"run_id": "str", "model": "str", "hardware": "str", "step": "int", "ts": "str",
                             "loss": "float", "lr": "float", "grad_norm": "const", "epoch": "null"}
    assert s.nulls
    assert s.types() == {"run_id": "VARCHAR", "model": "VARCHAR", "hardware": "VARCHAR", "step": "BIGINT",
                         "ts": "VARCHAR", "loss": "DOUBLE", "lr": "DOUBLE", "grad_norm": "DOUBLE"}


@pytest.mark.parametrize("line", [
    '{"table": "train_steps", "run_id": "r1", "run_id": "r2", "model": "m", "hardware": "h", "step": 1, "ts": 1}',
    {**STEP, "los": 1.0},  # unknown field
    {**STEP, "date": "2026-11-01"},  # derived
    {**STEP, "loss": "2.5"},  # a string for a number
    {**STEP, "loss": True},
    {**STEP, "step": float("nan")},  # NaN for an integer
    {**STEP, "step": "3"},
    {**STEP, "run_id": 7},
    {**STEP, "ts": float("inf")},
    {**STEP, "loss": [1.0]},  # nested
    {**STEP, "run_id": None},  # a required column null
    {k: v for k, v in STEP.items() if k != "ts"},  # or missing
    {**STEP, "table": "nope"},
    {**STEP, "table": 3},
    {k: v for k, v in STEP.items() if k != "table"},  # no table, no --table
    [STEP],
    "{not json}",
    '{"table": "train_steps", "run_id": "r1"} x',
])
def test_lines_the_row_path_must_read_have_no_shape(line):
    assert shape(line) is None


def test_a_float_written_integer_is_vouched_for_and_parsed_as_a_double():
    s = shape({**STEP, "step": 3.0})
    assert dict(s.kinds)["step"] == "float" and s.types()["step"] == "DOUBLE"  # checked integral in columns


def test_flags_fill_missing_columns_unless_they_do_not_fit():
    line = {"step": 1, "ts": "2026-11-01T10:00:00Z"}
    assert shape(line, "train_steps", run_id="r1", model="m", hardware="h") is not None
    assert shape(line, "train_steps", run_id="r1", model="m", hardware="h", gpu_count="x") is not None  # not a column
    assert shape(line, "train_steps", run_id="r1", model="m") is None  # hardware missing
    assert shape({**line, "precision": None}, "runs") is None  # runs has no step


def test_no_two_columns_of_a_table_are_alike_but_for_digits_and_signs():
    # Two such keys would share a place in a shape (a line could swap them): Shape.of refuses a line
    # holding both; no table has such a pair, so every line of known keys can be vouched for.
    for table in TABLES.values():
        names = [c.encode().translate(None, SHAPE_CUT) for c in table.schema.names]
        assert len(set(names)) == len(names), table.name


def test_the_head_is_the_leading_string_members_up_to_the_next_key():
    line = json.dumps({**STEP, "precision": "bf16"})
    s = shape(line)
    length, values = head(s)
    assert line.encode()[:length] == b'{"table": "train_steps", "run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu-x1", '
    assert values == {"table": "train_steps", "run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu-x1"}
    compact = json.dumps({"run_id": "r\u00e9", "model": "m", "step": 1, "hardware": "h", "ts": "x"},
                         separators=(",", ":"), ensure_ascii=False)
    length, values = head(shape(compact, "train_steps"))
    assert compact.encode()[:length] == '{"run_id":"r\u00e9","model":"m",'.encode()  # bytes, not characters
    assert values == {"run_id": "r\u00e9", "model": "m"}


def test_no_head_when_the_first_member_is_not_a_string_or_is_a_time():
    assert head(shape({"step": 1, **{k: v for k, v in STEP.items() if k != "step"}})) is None
    assert head(shape({"ts": "2026-11-01T10:00:00Z", "run_id": "r", "model": "m", "hardware": "h", "step": 1},
                      "train_steps")) is None
    # every member a string: the last one stays out (a line must keep one member to parse)
    runs = {"table": "runs", "run_id": "r", "model": "m", "hardware": "h", "started_at": "2026-11-01T10:00:00Z"}
    assert head(shape(runs))[1] == {"table": "runs", "run_id": "r", "model": "m", "hardware": "h"}
    assert head(shape({"table": "runs", "started_at": "2026-11-01T10:00:00Z", "run_id": "r", "model": "m",
                       "hardware": "h"}))[1] == {"table": "runs"}
