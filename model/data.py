"""Data for the training and evaluation jobs: tokenizers, a learnable default that needs no download,
loaders for a user's own files, and a sampler whose order is a pure function of the step.

Defaults (no download, seeded, learnable in seconds by a tiny model):
- ``arithmetic`` (causal LM): lines like ``417+86=503`` -- the format is learnt in a few dozen steps,
  the carries take longer, so the loss keeps falling for a while.
- ``sentiment`` (classifier): a small grammar (``the plot was not very dull`` -> positive); the label
  is the adjective's polarity flipped by ``not``, so a model must look at two words to get it right.

A user's data: ``text`` (a .txt file or a folder of them), ``jsonl`` (``{"text": ..., "label": ...}``
per line) or ``hf_disk`` (a ``datasets`` folder written by ``save_to_disk``).

Streaming (``data.streaming=true``, for ``text`` and ``jsonl``): for corpora that do not fit in memory,
or that arrive through a pipe or a network mount. The training split is read lazily, a batch at a
time, in file order (shuffle the files beforehand: there is no shuffle buffer), tokenized on the fly;
at the end of the source it starts again (a new pass). ``data.path`` may be a file, a folder, or a
named pipe. Validation is ``data.val_path`` (read into memory), else the first ``data.val_examples``
examples of the stream, which every pass then skips. The time a step waits for the source is the
trainer's ``data_time_ms``; ``data.prefetch_batches`` reads that many batches ahead on a background
thread (``Loader``), so reading the source overlaps the steps instead of adding to them.
"""
from __future__ import annotations

import itertools
import json
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import CfgNode


def default_config() -> CfgNode:
    return CfgNode(
        name="arithmetic",   # arithmetic | sentiment | text | jsonl | hf_disk
        path=None,           # file or folder for text, jsonl and hf_disk
        text_field="text",   # jsonl / hf_disk column holding the text
        label_field="label",  # jsonl / hf_disk column holding the class label (classifiers)
        n_examples=20000,    # generated examples for arithmetic / sentiment
        max_digits=3,        # arithmetic operands are below 10**max_digits
        val_fraction=0.1,    # held-out share; its examples are never trained on
        seed=1337,           # generator and split seed (the data order has its own, trainer.seed)
        tokenizer="bytes",   # bytes | hf (the tokenizer saved in the --init-from folder)
        streaming=False,     # text / jsonl: read data.path lazily, a batch at a time (big corpora, pipes, mounts)
        val_path=None,       # streaming: validation file (same format); null = the stream's first val_examples
        val_examples=200,    # streaming without val_path: examples (jsonl lines, text lines) held out from the head
        prefetch_batches=0,  # batches read ahead on a background thread (0: read in the training loop)
    )


# -----------------------------------------------------------------------------
# tokenizers


class ByteTokenizer:
    """UTF-8 bytes are tokens 0..255; 256 ends a document (and pads), 257 starts a classifier input."""
    name = "bytes"
    vocab_size = 258
    eot_id = pad_id = 256
    cls_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer saved beside a HF model (``save_pretrained`` layout), loaded from disk only."""
    name = "hf"

    def __init__(self, path: str):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self.tok)
        self.eot_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eot_id
        self.cls_id = self.tok.cls_token_id if self.tok.cls_token_id is not None else self.tok.bos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def build_tokenizer(cfg: CfgNode, model_path: str | None = None):
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if cfg.tokenizer == "hf":
        if not model_path:
            raise ValueError("data.tokenizer=hf needs --init-from pointing at a folder with a saved tokenizer")
        return HFTokenizer(model_path)
    raise ValueError(f"unknown data.tokenizer {cfg.tokenizer!r} (bytes | hf)")


# -----------------------------------------------------------------------------
# raw examples: (texts, labels or None) for train and validation


def arithmetic_texts(n: int, max_digits: int, rng: random.Random) -> list[str]:
    hi = 10 ** max_digits
    out = []
    for _ in range(n):
        a, b = rng.randrange(hi), rng.randrange(hi)
        op = rng.choice("+-")
        out.append(f"{a}{op}{b}={a + b if op == '+' else a - b}")
    return out


_SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the ending", "the soundtrack", "the cast"]
_VERBS = ["was", "is", "felt", "seemed"]
_ADVERBS = ["", "really ", "very ", "quite ", "truly "]
_POSITIVE = ["good", "great", "wonderful", "brilliant", "fun", "moving", "superb"]
_NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "weak", "clumsy"]


def sentiment_examples(n: int, rng: random.Random) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.3
        adj = rng.choice(_POSITIVE if positive else _NEGATIVE)
        neg = "not " if negated else ""
        texts.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {neg}{rng.choice(_ADVERBS)}{adj}")
        labels.append(int(positive != negated))
    return texts, labels


def _files(path: Path, suffix: str) -> list[Path]:
    """A folder's files of one kind (sorted), or the path itself (a file or a named pipe)."""
    if path.is_dir():
        files = sorted(path.glob(f"*{suffix}"))
        if not files:
            raise ValueError(f"no {suffix} files in {path}")
        return files
    return [path]


def _iter_jsonl(path: Path, text_field: str, label_field: str | None):
    """(text, label or None) per non-blank line, lazily: a pipe or a huge file is never read whole."""
    for f in _files(path, ".jsonl"):
        with open(f) as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if text_field not in rec:
                    raise ValueError(f"{f}:{i}: no {text_field!r} field")
                if label_field and label_field not in rec:
                    raise ValueError(f"{f}:{i}: no {label_field!r} field")
                yield str(rec[text_field]), (rec[label_field] if label_field else None)


def _read_jsonl(path: Path, text_field: str, label_field: str | None):
    texts, labels = [], []
    for text, label in _iter_jsonl(path, text_field, label_field):
        texts.append(text)
        labels.append(label)
    return texts, (labels if label_field else None)


def _read_text(path: Path) -> list[str]:
    return [f.read_text(encoding="utf-8") for f in _files(path, ".txt")]


def _read_hf_disk(path: Path, text_field: str, label_field: str | None):
    """A ``datasets`` folder: a DatasetDict with train (+ validation or test) splits, or one Dataset."""
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("data.name=hf_disk needs the `datasets` package (pip install datasets)") from e
    ds = datasets.load_from_disk(str(path))
    splits = {}
    if isinstance(ds, datasets.DatasetDict):
        splits["train"] = ds["train"]
        for name in ("validation", "valid", "test"):
            if name in ds:
                splits["val"] = ds[name]
                break
    else:
        splits["train"] = ds

    def cols(d):
        return list(map(str, d[text_field])), (list(d[label_field]) if label_field else None)

    return {k: cols(v) for k, v in splits.items()}


def _split(texts: list, labels: list | None, val_fraction: float, rng: random.Random):
    order = list(range(len(texts)))
    rng.shuffle(order)
    n_val = max(1, int(round(len(texts) * val_fraction)))
    val, train = order[:n_val], order[n_val:]

    def pick(ix):
        return [texts[i] for i in ix], ([labels[i] for i in ix] if labels is not None else None)

    return pick(train), pick(val)


def raw_splits(cfg: CfgNode, task: str):
    """{'train': (texts, labels), 'val': (texts, labels)}; labels is None for the LM task."""
    rng = random.Random(cfg.seed)
    label_field = cfg.label_field if task == "cls" else None
    if cfg.name == "arithmetic":
        if task != "lm":
            raise ValueError("data.name=arithmetic is a language-modelling task; use sentiment for classifiers")
        n_val = max(1, int(cfg.n_examples * cfg.val_fraction))
        # Two independent streams, so no validation problem is a verbatim copy of a training line
        # except by chance (and the chance is the same as for unseen problems at test time).
        return {"train": (arithmetic_texts(cfg.n_examples - n_val, cfg.max_digits, rng), None),
                "val": (arithmetic_texts(n_val, cfg.max_digits, random.Random(cfg.seed + 1)), None)}
    if cfg.name == "sentiment":
        texts, labels = sentiment_examples(cfg.n_examples, rng)
        train, val = _split(texts, labels, cfg.val_fraction, rng)
        return {"train": train, "val": val} if task == "cls" else {"train": (train[0], None), "val": (val[0], None)}
    if not cfg.path:
        raise ValueError(f"data.name={cfg.name} needs data.path")
    path = Path(cfg.path).expanduser()
    if cfg.name == "text":
        if task != "lm":
            raise ValueError("data.name=text has no labels; use jsonl with a label field for classifiers")
        texts = _read_text(path)
        if len(texts) == 1:  # one file: hold out its tail, so validation is text the model never saw
            text = texts[0]
            cut = int(len(text) * (1 - cfg.val_fraction))
            return {"train": ([text[:cut]], None), "val": ([text[cut:]], None)}
        train, val = _split(texts, None, cfg.val_fraction, rng)
        return {"train": train, "val": val}
    if cfg.name == "jsonl":
        texts, labels = _read_jsonl(path, cfg.text_field, label_field)
        train, val = _split(texts, labels, cfg.val_fraction, rng)
        return {"train": train, "val": val}
    if cfg.name == "hf_disk":
        splits = _read_hf_disk(path, cfg.text_field, label_field)
        if "val" not in splits:
            splits["train"], splits["val"] = _split(*splits["train"], cfg.val_fraction, rng)
        return splits
    raise ValueError(f"unknown data.name {cfg.name!r} (arithmetic | sentiment | text | jsonl | hf_disk)")


# -----------------------------------------------------------------------------
# tensors


@dataclass
class LMData:
    """Non-overlapping windows of ``block_size + 1`` tokens from one token stream (x = w[:-1], y = w[1:])."""
    windows: torch.Tensor  # (n, block_size + 1) int64
    tokens: int  # tokens per sample, for tokens/s

    @property
    def n(self) -> int:
        return len(self.windows)

    def batch(self, idx: torch.Tensor) -> dict:
        w = self.windows[idx]
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}


@dataclass
class ClsData:
    input_ids: torch.Tensor  # (n, block_size) int64, [CLS] first, padded
    attention_mask: torch.Tensor  # (n, block_size)
    labels: torch.Tensor  # (n,) int64
    tokens: int
    label_names: list

    @property
    def n(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> dict:
        return {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx],
                "labels": self.labels[idx]}


def lm_data(texts: list[str], tok, block_size: int) -> LMData:
    stream: list[int] = []
    for t in texts:
        stream += tok.encode(t)
        stream.append(tok.eot_id)  # documents end with <eot>, as in GPT-2 pre-training
    n = (len(stream) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(stream)} tokens is less than one block of {block_size + 1}")
    s = torch.tensor(stream[: n * block_size + 1], dtype=torch.long)
    # window i = s[i*B : i*B + B + 1]: consecutive windows share one token, the next window's first input
    return LMData(s.unfold(0, block_size + 1, block_size), block_size)


def cls_data(texts: list[str], labels: list, tok, block_size: int, label_names: list | None = None) -> ClsData:
    label_names = label_names or sorted(set(labels), key=str)
    index = {v: i for i, v in enumerate(label_names)}
    ids = torch.full((len(texts), block_size), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), block_size), dtype=torch.long)
    for i, t in enumerate(texts):
        row = [tok.cls_id, *tok.encode(t)][:block_size]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    y = torch.tensor([index[v] for v in labels], dtype=torch.long)
    return ClsData(ids, mask, y, block_size, label_names)


class StreamingData:
    """Training samples read lazily from a source, in its order, tokenized as they are needed.

    Sample ``i`` is the ``i``-th window of ``block_size + 1`` tokens of the packed token stream (LM:
    examples are concatenated, each document ended by ``<eot>``, as ``lm_data`` does) or the ``i``-th
    example (classifier). ``batch(positions)`` takes ascending sample numbers (``Sampler`` with
    ``n=None`` gives them), reading forward and discarding what it skips (other DDP ranks' samples,
    or what a resumed run already trained on); a stream cannot go back. ``open_examples()`` starts a
    fresh pass over the source: ``(text, label, ends_document)`` tuples; the first ``skip`` of every
    pass are validation and never trained on."""
    n = None  # unknown until the source ends: the sampler reads it in order, not by permutation

    def __init__(self, open_examples, task: str, tok, block_size: int, skip: int = 0, label_names: list | None = None):
        self.open_examples, self.task, self.tok, self.block_size = open_examples, task, tok, block_size
        self.skip, self.label_names = skip, label_names
        self.tokens = block_size
        self.position = 0  # the next sample the stream yields
        self.passes = 0  # completed passes over the source
        self._samples = None

    def _examples(self):
        while True:
            seen = False
            for ex in itertools.islice(self.open_examples(), self.skip, None):
                seen = True
                yield ex
            if not seen:
                raise ValueError("the streaming source has no training examples (after the validation head)")
            self.passes += 1

    def _lm_samples(self):
        buf: list[int] = []
        width = self.block_size + 1
        for text, _, ends_document in self._examples():
            buf += self.tok.encode(text)
            if ends_document:
                buf.append(self.tok.eot_id)
            while len(buf) >= width:
                # consecutive windows share one token, exactly as lm_data's windows do
                yield {"input_ids": torch.tensor(buf[: width - 1]), "labels": torch.tensor(buf[1:width])}
                del buf[: width - 1]

    def _cls_samples(self):
        index = {v: i for i, v in enumerate(self.label_names)}
        for text, label, _ in self._examples():
            if label not in index:
                raise ValueError(f"label {label!r} of the streamed training data is not among the validation "
                                 f"labels {self.label_names}")
            row = [self.tok.cls_id, *self.tok.encode(text)][: self.block_size]
            ids = torch.full((self.block_size,), self.tok.pad_id, dtype=torch.long)
            mask = torch.zeros(self.block_size, dtype=torch.long)
            ids[: len(row)], mask[: len(row)] = torch.tensor(row), 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(index[label])}

    def batch(self, positions: torch.Tensor) -> dict:
        if self._samples is None:  # opened on first use: building the datasets never blocks on a pipe
            self._samples = self._lm_samples() if self.task == "lm" else self._cls_samples()
        out = []
        for p in positions.tolist():
            if p < self.position:
                raise ValueError(f"streaming data cannot go back to sample {p} (at {self.position})")
            while self.position < p:  # not this rank's, or already trained on before a resume
                next(self._samples)
                self.position += 1
            out.append(next(self._samples))
            self.position += 1
        return {k: torch.stack([o[k] for o in out]) for k in out[0]}


def _stream_examples(cfg: CfgNode, path: Path, task: str):
    """One pass over a text / jsonl source: ``(text, label or None, ends_document)`` per example. A
    JSONL line is an example and a document; a text line (with its newline) is an example, and a
    file is a document."""
    if cfg.name == "jsonl":
        for text, label in _iter_jsonl(path, cfg.text_field, cfg.label_field if task == "cls" else None):
            yield text, label, True
        return
    for f in _files(path, ".txt"):
        with open(f, encoding="utf-8") as fh:
            prev = None
            for line in fh:
                if prev is not None:
                    yield prev, None, False
                prev = line
            if prev is not None:
                yield prev, None, True


def build_streaming(cfg: CfgNode, task: str, tok, block_size: int):
    """(streaming train, in-memory val) for ``data.streaming``: see the module docstring."""
    if cfg.name not in ("text", "jsonl"):
        raise ValueError(f"data.streaming reads text or jsonl sources, not data.name={cfg.name}")
    if task == "cls" and cfg.name == "text":
        raise ValueError("data.name=text has no labels; use jsonl with a label field for classifiers")
    if not cfg.path:
        raise ValueError(f"data.name={cfg.name} needs data.path")
    path = Path(cfg.path).expanduser()
    if cfg.val_path:
        val, skip = list(_stream_examples(cfg, Path(cfg.val_path).expanduser(), task)), 0
    else:
        val, skip = list(itertools.islice(_stream_examples(cfg, path, task), cfg.val_examples)), cfg.val_examples
    if not val:
        raise ValueError("streaming data: no validation examples (set data.val_path or data.val_examples)")
    texts, labels = [t for t, _, _ in val], [lb for _, lb, _ in val]
    if task == "lm":
        val_ds = lm_data(["".join(texts)] if cfg.name == "text" else texts, tok, block_size)
    else:
        val_ds = cls_data(texts, labels, tok, block_size)
    train = StreamingData(lambda: _stream_examples(cfg, path, task), task, tok, block_size, skip=skip,
                          label_names=getattr(val_ds, "label_names", None))
    return train, val_ds


def build(cfg: CfgNode, task: str, tok, block_size: int):
    """(train, val) datasets for ``task`` ('lm' or 'cls'): tensors in memory, or a stream for training."""
    if cfg.streaming:
        return build_streaming(cfg, task, tok, block_size)
    splits = raw_splits(cfg, task)
    if task == "lm":
        return lm_data(splits["train"][0], tok, block_size), lm_data(splits["val"][0], tok, block_size)
    train = cls_data(*splits["train"], tok, block_size)
    return train, cls_data(*splits["val"], tok, block_size, label_names=train.label_names)


# -----------------------------------------------------------------------------
# sampling: the order is a function of (seed, step), so a resumed run sees exactly the batches the
# uninterrupted run would have seen, and every DDP rank sees a disjoint slice of the same order.
# A stream (n=None) is read in its own order: the indices are sample numbers, in the same slices.


class Sampler:
    def __init__(self, n: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.grad_accum = n, batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
            if len(self._perms) > 2:  # a batch spans at most two epochs; older orders are done with
                del self._perms[min(self._perms)]
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> torch.Tensor:
        start = ((step * self.grad_accum + micro) * self.world + self.rank) * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        if self.n is None:
            return pos
        epochs, offs = pos // self.n, pos % self.n
        if bool((epochs == epochs[0]).all()):
            return self._perm(int(epochs[0]))[offs]
        return torch.stack([self._perm(int(e))[o] for e, o in zip(epochs, offs)])

    def epoch(self, step: int) -> float | None:
        """Fractional epoch after ``step`` (0-based) completes (None for a stream of unknown length)."""
        return (step + 1) * self.global_batch / self.n if self.n else None


class Loader:
    """The micro-batches of steps ``start``..``stop`` in the sampler's order. ``depth`` > 0: one
    background thread reads up to ``depth`` batches ahead (in order: a stream cannot go back), so a
    slow source or tokenizing on the fly overlaps the forward and backward passes; 0: each batch is
    read when asked for. A reader error is raised in the training loop, at the batch it failed on."""

    def __init__(self, ds, sampler: Sampler, start: int, stop: int, grad_accum: int, depth: int = 0):
        self.ds, self.sampler, self.depth = ds, sampler, int(depth or 0)
        self._q: queue.Queue = queue.Queue(maxsize=max(1, self.depth))
        self._stop = threading.Event()
        if self.depth > 0:
            order = ((step, micro) for step in range(start, stop) for micro in range(grad_accum))
            threading.Thread(target=self._read, args=(order,), name="mhw-loader", daemon=True).start()

    def _read(self, order) -> None:
        for key in order:
            try:
                item = (key, self.ds.batch(self.sampler.indices(*key)))
            except BaseException as e:  # noqa: BLE001 - handed to the training loop
                item = (key, e)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item[1], BaseException):
                return

    def batch(self, step: int, micro: int) -> dict:
        if self.depth == 0:
            return self.ds.batch(self.sampler.indices(step, micro))
        key, item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        if key != (step, micro):
            raise RuntimeError(f"loader out of order: read {key}, the loop is at {(step, micro)}")
        return item

    def close(self) -> None:
        self._stop.set()
