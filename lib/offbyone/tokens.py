"""Prepared token folders: writing a Source's token arrays (`encode`) and reading them
(`TokenData`, random-window batches).

A prepared folder holds
    train.bin, val.bin, test.bin   token ids (uint16, or uint32 for vocabularies above 65,536)
    meta.json                      vocabulary, split sizes, works per split, source and hashes
    tokenizer.json                 the trained BPE (bpe only)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .corpora import text as corpus_text
from .corpora.text import HELDOUT_FRACTION, SPLITS, CorpusError, Source, sha256_file
from .io import write_dir, write_json
from .tokenizer import BOS, BPETokenizer, CharTokenizer, check_tokenizer, dtype_for, subword_classes

FORMAT_VERSION = 2       # 2: dtype, tokenizer config and per-split characters in meta.json
BPE_TRAIN_MAX_CHARS = 50_000_000  # the BPE trains on at most the first 50M training characters
ENCODE_BATCH_CHARS = 1 << 16


def write_prepared(out_dir: Path, meta: dict, fill) -> dict:
    """A prepared folder, atomically: `fill(tmp)` writes the arrays (and completes `meta`),
    then meta.json is written with the format version. Returns the meta written."""
    written = {}

    def write(tmp: Path):
        fill(tmp)
        written.update({"format_version": FORMAT_VERSION, **meta})
        write_json(tmp / "meta.json", written)
    write_dir(out_dir, write)
    return written


def read_meta(path: Path) -> dict:
    """A prepared folder's meta.json, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe(meta: dict) -> str:
    unit = "chars" if meta.get("tokenizer") == "char" else "tokens"
    parts = [f"{meta.get('tokenizer', 'char')} vocab {meta['vocab_size']} (incl. {BOS})"]
    for split in SPLITS:
        s = meta["splits"][split]
        parts.append(f"{split} {s['tokens']:,} {unit} in {len(s['works'])} work(s)")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Encoding: a tokenizer learned from the source, then one streamed pass writes the three splits

def _progress(total, desc, verbose):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="char", unit_scale=True, disable=not verbose,
                mininterval=1.0)


def _split_caps(max_tokens: int) -> dict[str, int | None]:
    if not max_tokens:
        return {s: None for s in SPLITS}
    held = max(1, math.ceil(max_tokens * HELDOUT_FRACTION / (1 - 2 * HELDOUT_FRACTION)))
    return {"train": max_tokens, "val": held, "test": held}


def _capped_pieces(source: Source, caps_chars: dict[str, int | None], splits=SPLITS):
    """The source's pieces of `splits`, each split cut at its character cap (if any)."""
    seen = {s: 0 for s in SPLITS}
    for split, text in source.pieces():
        if split not in splits:
            continue
        cap = caps_chars[split]
        if cap is not None:
            if seen[split] >= cap:
                if all(caps_chars[s] is not None and seen[s] >= caps_chars[s] for s in splits):
                    return
                continue
            text = text[:cap - seen[split]]
        seen[split] += len(text)
        yield split, text


def _lines_batches(buf: str) -> tuple[list[str], str]:
    """Cut buf after its last newline into batches of whole lines (about 64 KiB each). A buffer
    without a newline is cut after its last space (or anywhere), so memory stays bounded."""
    cut = buf.rfind("\n") + 1 or buf.rfind(" ") + 1 or len(buf)
    head, rest = buf[:cut], buf[cut:]
    out, i = [], 0
    while i < len(head):
        j = head.find("\n", i + ENCODE_BATCH_CHARS)
        j = len(head) if j < 0 else j + 1
        out.append(head[i:j])
        i = j
    return out, rest


def learn_tokenizer(source: Source, tokenizer: str, bpe_vocab_size: int, caps: dict,
                    verbose: bool):
    """(tokenizer, character caps while encoding): characters seen in the capped text, or a
    byte-level BPE trained on the training split (then capped in tokens while encoding)."""
    if tokenizer == "char":
        chars = set()
        with _progress(source.chars, "vocabulary", verbose) as bar:
            for _, text in _capped_pieces(source, caps):
                chars.update(text)
                bar.update(len(text))
        return CharTokenizer(chars), caps                      # one char, one token
    train_caps = {s: BPE_TRAIN_MAX_CHARS for s in SPLITS}
    bar = _progress(None, "training BPE", verbose)

    def texts():
        for _, text in _capped_pieces(source, train_caps, splits=("train",)):
            bar.update(len(text))
            yield text
    with bar:
        tok = BPETokenizer.train(texts(), bpe_vocab_size)
    return tok, {s: None for s in SPLITS}


class _SplitWriter:
    """The three splits' .bin files, their hashes and counts, each split cut at its token cap."""

    def __init__(self, folder: Path, tok, dtype: np.dtype, caps: dict):
        self.tok, self.dtype, self.caps = tok, dtype, caps
        self.files = {s: open(folder / f"{s}.bin", "wb") for s in SPLITS}
        self.hashes = {s: hashlib.sha256() for s in SPLITS}
        self.tokens, self.chars = {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}

    def full(self, split: str) -> bool:
        return self.caps[split] is not None and self.tokens[split] >= self.caps[split]

    def emit(self, split: str, texts: list[str]) -> None:
        if self.full(split):
            return
        tok = self.tok
        arrays = tok.encode_batch(texts) if tok.kind == "bpe" else [tok.encode(t) for t in texts]
        for t, ids in zip(texts, arrays):
            room = None if self.caps[split] is None else self.caps[split] - self.tokens[split]
            if room is not None and room <= 0:
                return
            ids = ids[:room] if room is not None else ids
            data = ids.astype(self.dtype).tobytes()
            self.files[split].write(data)
            self.hashes[split].update(data)
            self.tokens[split] += len(ids)
            self.chars[split] += len(t)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _encode_into(writer: _SplitWriter, source: Source, text_caps: dict, verbose: bool) -> None:
    bufs = {s: "" for s in SPLITS}
    try:
        with _progress(source.chars, f"encoding ({writer.tok.kind})", verbose) as bar:
            for split, text in _capped_pieces(source, text_caps):
                bar.update(len(text))
                bufs[split] += text
                if len(bufs[split]) >= corpus_text.CHUNK_BYTES:
                    batches, bufs[split] = _lines_batches(bufs[split])
                    writer.emit(split, batches)
                    if all(writer.full(s) for s in SPLITS):
                        break
            for split in SPLITS:
                if bufs[split]:
                    batches, rest = _lines_batches(bufs[split])
                    writer.emit(split, batches + ([rest] if rest else []))
    finally:
        writer.close()


def encode(source: Source, out_dir: Path, tokenizer: str = "char", bpe_vocab_size: int = 4096,
           max_tokens: int = 0, verbose: bool = False) -> dict:
    """Tokenize the source into out_dir (atomically): token arrays, meta.json and, for BPE,
    tokenizer.json. Memory stays bounded by a chunk, whatever the corpus size."""
    check_tokenizer(tokenizer, bpe_vocab_size)
    t0 = time.perf_counter()
    caps = _split_caps(max_tokens)
    tok, text_caps = learn_tokenizer(source, tokenizer, bpe_vocab_size, caps, verbose)
    dtype = np.dtype(dtype_for(tok.vocab_size))
    meta = {"tokenizer": tok.kind,
            "tokenizer_config": {"kind": tokenizer, **({"bpe_vocab_size": bpe_vocab_size}
                                                       if tokenizer == "bpe" else {})},
            "max_tokens": max_tokens, "source": source.info, "vocab_size": tok.vocab_size,
            "itos": tok.itos, "bos_id": tok.bos_id, "dtype": dtype.name, "splits": {}}
    if tokenizer == "bpe":
        meta["token_classes"] = subword_classes(tok.itos)

    def fill(tmp: Path):
        writer = _SplitWriter(tmp, tok, dtype, caps)
        _encode_into(writer, source, text_caps, verbose)
        for s in SPLITS:
            if writer.tokens[s] < 2:
                raise CorpusError(f"split {s!r} of the corpus came out with {writer.tokens[s]} tokens")
            meta["splits"][s] = {"tokens": writer.tokens[s], "chars": writer.chars[s],
                                 "works": source.works[s], "sha256": writer.hashes[s].hexdigest()}
        if tokenizer == "bpe":
            tok.save(tmp / "tokenizer.json")
            meta["tokenizer_sha256"] = sha256_file(tmp / "tokenizer.json")
        meta["prepare_s"] = round(time.perf_counter() - t0, 2)

    return write_prepared(out_dir, meta, fill)


# --------------------------------------------------------------------------------------------
# Reading: memory-mapped splits and random-window batches

class TokenData:
    """A prepared corpus: memory-mapped splits and random-window batches."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise CorpusError(f"{self.dir} is not a prepared corpus (no meta.json); "
                              "run `make data` or `python -m offbyone.data`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{meta_path} has format version {self.meta.get('format_version')}, "
                              f"expected {FORMAT_VERSION}; prepare it again with --force")
        self.vocab_size = self.meta["vocab_size"]
        self.bos_id = self.meta["bos_id"]
        self.itos = self.meta["itos"]
        self.dtype = np.dtype(self.meta.get("dtype", "uint16"))
        self.splits = {}
        for split in SPLITS:
            n = self.meta["splits"][split]["tokens"]
            path = self.dir / f"{split}.bin"
            if not path.exists() or path.stat().st_size != self.dtype.itemsize * n:
                raise CorpusError(f"{path} is missing or truncated; prepare again with --force")
            self.splits[split] = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer
            self._tokenizer = load_tokenizer(self.dir, self.meta)
        return self._tokenizer

    def decode(self, ids) -> str:
        if self.meta.get("tokenizer") == "bpe":
            return self.tokenizer.decode(ids)
        sep = "" if self.meta.get("tokenizer", "char") == "char" else " "
        return sep.join(self.itos[int(i)] for i in ids)

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  generator: torch.Generator, bos: bool = False):
        """Random windows: x (B, T) and y (B, T) int64, y the next token of x.

        With bos, x = [BOS, c_0 .. c_{T-2}] and y = [c_0 .. c_{T-1}]."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        data = self.splits[split]
        span = block_size if bos else block_size + 1  # text tokens each window needs
        if len(data) < span + 1:
            raise CorpusError(f"split {split!r} has {len(data)} tokens, fewer than one window "
                              f"of {span}")
        starts = torch.randint(len(data) - span + 1, (batch_size,), generator=generator).numpy()
        win = np.stack([data[s:s + span] for s in starts]).astype(np.int64)
        win = torch.from_numpy(win)
        if bos:
            x = torch.cat([torch.full((batch_size, 1), self.bos_id, dtype=torch.int64),
                           win[:, :-1]], dim=1)
            return x, win
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()
