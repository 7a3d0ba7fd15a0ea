"""The importers' bounds alone (no lake): lines are read in chunks and split as bytes.splitlines
splits them, a line over the bound comes back as its head and size, and no raw row is unbounded."""
import io
import json
import random

import pytest

from warehouse.importers import Record, RunMeta, parse, read_lines
from warehouse.schemas import LINE_BYTES, RAW_HEAD


def expected(data: bytes, limit: int) -> list:
    """What read_lines must give: bytes.splitlines, a long line cut to its head with its size."""
    keep = min(RAW_HEAD, limit)
    return [(n, line, None) if len(line) <= limit else (n, line[:keep], len(line))
            for n, line in enumerate(data.splitlines(), start=1)]


@pytest.mark.parametrize("seed", range(40))
def test_read_lines_splits_as_splitlines_whatever_the_chunks(seed):
    rnd = random.Random(seed)
    pieces = [rnd.choice([b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\n", b"", b"x", b"{\"a\": 1}",
                          b"y" * rnd.randint(1, 40), b"z" * rnd.randint(50, 300)]) for _ in range(rnd.randint(0, 60))]
    data = b"".join(pieces)
    limit, chunk = rnd.choice([(8, 3), (16, 5), (30, 7), (64, 64), (100, 1)])
    assert list(read_lines(io.BytesIO(data), limit, chunk)) == expected(data, limit), (limit, chunk, data)


def test_read_lines_cr_lf_split_across_chunks_is_one_break():
    data = b"abc\r\ndef\r\n\rghi"
    for chunk in range(1, len(data) + 1):
        assert list(read_lines(io.BytesIO(data), 100, chunk)) == [(1, b"abc", None), (2, b"def", None),
                                                                 (3, b"", None), (4, b"ghi", None)]


class Counting(io.RawIOBase):
    """A file of one huge line between two small ones, made on the fly: nothing holds it whole."""

    def __init__(self, size: int):
        self.parts = [b"first\n", None, b"\nlast\n"]
        self.left, self.read_bytes = size, 0

    def readable(self):
        return True

    def read(self, n=-1):
        while self.parts:
            if self.parts[0] is None:
                if self.left:
                    k = min(n, self.left)
                    self.left -= k
                    self.read_bytes += k
                    return b"x" * k
                self.parts.pop(0)
                continue
            out = self.parts.pop(0)
            self.read_bytes += len(out)
            return out
        return b""


def test_a_huge_line_is_read_in_chunks_and_comes_back_as_its_head():
    f = Counting(50 * LINE_BYTES)
    biggest = 0
    got = []
    for item in read_lines(f):
        biggest = max(biggest, len(item[1]))
        got.append(item if item[2] is None else (item[0], item[1][:3], len(item[1]), item[2]))
    assert got == [(1, b"first", None), (2, b"xxx", RAW_HEAD, 50 * LINE_BYTES), (3, b"last", None)]
    assert f.read_bytes == 50 * LINE_BYTES + 12  # every byte read once; what is yielded stays small
    assert biggest == RAW_HEAD


def test_a_line_at_the_bound_is_kept_and_one_past_it_is_not(tmp_path):
    ok = json.dumps({"table": "runs", "run_id": "r", "config_json": "c" * (LINE_BYTES - 200)})
    ok += " " * (LINE_BYTES - len(ok))  # exactly LINE_BYTES bytes
    path = tmp_path / "edge.jsonl"
    path.write_text(ok + "\n" + ok + " \n")
    p = parse(str(path), "jsonl", RunMeta())
    assert [(r.line, r.error) for r in p.records][0] == (1, None)
    second = p.records[1]
    assert second.line == 2 and second.values is None
    assert second.error == (None, f"line too long: {LINE_BYTES + 1:,} bytes, over the limit of {LINE_BYTES:,} "
                                  "(1 MiB); not parsed")
    assert second.raw.startswith(ok[:RAW_HEAD]) and len(second.raw) < RAW_HEAD + 100
    assert f"the row is {LINE_BYTES + 1:,} bytes" in second.raw


def test_no_raw_row_of_any_format_is_unbounded():
    r = Record("runs", {}, 1, "é" * (LINE_BYTES + 1))
    assert r.raw.startswith("é" * RAW_HEAD) and not r.raw.startswith("é" * (RAW_HEAD + 1))
    assert f"the row is {LINE_BYTES + 1:,} characters" in r.raw
    assert Record("runs", {}, 1, "a" * LINE_BYTES).raw == "a" * LINE_BYTES  # up to the bound: whole


def test_hf_trainer_entry_over_the_bound_keeps_a_bounded_raw(tmp_path):
    state = {"global_step": 2, "max_steps": 2, "log_history": [
        {"step": 1, "loss": 1.0}, "x" * (2 * LINE_BYTES), {"step": 2, "loss": 0.5}]}
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state))
    p = parse(str(path), "hf-trainer", RunMeta(model="m", hardware="h"))
    bad = [r for r in p.records if r.error]
    assert [(r.line, r.error[1]) for r in bad] == [(2, "log_history entry is not an object")]  # 1-based
    assert len(bad[0].raw) < RAW_HEAD + 100 and f"the row is {2 * LINE_BYTES + 2:,} characters" in bad[0].raw


def test_mlflow_metric_line_over_the_bound_is_rejected_with_its_file(tmp_path):
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: abc123\nstatus: 3\nstart_time: 1714564800000\n")
    with open(run / "metrics" / "loss", "w") as f:
        f.write("1714564801000 2.5 1\n" + "1" * (3 * LINE_BYTES) + "\n1714564802000 2.0 2\n")
    p = parse(str(run), "mlflow", RunMeta(model="m", hardware="h"))
    assert sorted(r.values["step"] for r in p.records if r.table == "train_steps" and not r.error) == [1, 2]
    (bad,) = [r for r in p.records if r.error]
    assert (bad.file, bad.line, bad.error[0]) == (str(run / "metrics" / "loss"), 2, None)
    assert bad.error[1].startswith(f"line too long: {3 * LINE_BYTES:,} bytes")
    assert json.loads(bad.raw)["metric"] == "loss" and len(bad.raw) < RAW_HEAD + 200
