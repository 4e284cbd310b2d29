"""Text every corpus shares: one validating reader, one splitter, and the Source they make.

Every corpus's text goes through `text_chunks` (valid UTF-8, no NUL bytes, a leading byte-order
mark dropped, \\r\\n and \\r turned into \\n) and every corpus of named documents is split by
`split_documents`: whole documents held out for validation and test (a seeded shuffle, 5% of
the characters each), or, with fewer than three documents, a contiguous 90/5/5 split of their
text joined by newlines.
"""
from __future__ import annotations

import codecs
import hashlib
import random
from pathlib import Path
from typing import Callable, Iterable, Iterator

SPLITS = ("train", "val", "test")
HELDOUT_FRACTION = 0.05   # of characters, for each of val and test
SPLIT_SEED = 0            # the seeded shuffle that picks held-out works
CHUNK_BYTES = 1 << 22     # 4 MiB of a file at a time


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, empty, binary or not UTF-8, or a bad archive."""


class CorpusUnreachable(CorpusError):
    """A remote corpus that cannot be fetched (offline): the caller may fall back."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(files: list[Path]) -> str:
    """One digest of several files' names and contents."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------------------------
# The one reader

def text_chunks(raw_chunks: Iterable[bytes], name: str) -> Iterator[str]:
    """Decode byte chunks as UTF-8 text, validated and normalised (see the module docstring).
    A \\r\\n pair split across two chunks stays one newline."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    consumed, first, carry_cr = 0, True, False
    raw_chunks = iter(raw_chunks)
    while True:
        raw = next(raw_chunks, b"")
        final = not raw
        if b"\x00" in raw:
            raise CorpusError(f"corpus file {name} looks binary (it contains NUL bytes); "
                              "give a UTF-8 text file")
        try:
            text = dec.decode(raw, final=final)
        except UnicodeDecodeError as e:
            raise CorpusError(f"corpus file {name} is not valid UTF-8 (byte about "
                              f"{consumed + e.start}: {e.reason}); give a UTF-8 text file") from None
        consumed += len(raw)
        if first and text:
            text, first = text.lstrip("\ufeff"), False
        if carry_cr:
            text, carry_cr = "\r" + text, False
        if text.endswith("\r") and not final:
            text, carry_cr = text[:-1], True
        text = normalize_newlines(text)
        if text:
            yield text
        if final:
            return


def check_nonblank(n_chars: int, printable: bool, name: str) -> None:
    if n_chars == 0:
        raise CorpusError(f"corpus file {name} is empty")
    if not printable:
        raise CorpusError(f"corpus file {name} holds only whitespace")


def decode(raw: bytes, name: str) -> str:
    """A whole file's bytes (already in memory) as validated text; refuses blank files."""
    text = "".join(text_chunks([raw], name))
    check_nonblank(len(text), not text.isspace(), name)
    return text


def stream_file(path: Path, chunk_bytes: int | None = None) -> Iterator[str]:
    """A UTF-8 file's validated text in chunks: nothing holds the whole file in memory."""
    size = chunk_bytes or CHUNK_BYTES

    def raw():
        with open(path, "rb") as f:
            yield from iter(lambda: f.read(size), b"")
    return text_chunks(raw(), str(path))


def count_chars(path: Path) -> int:
    """Characters of a file after normalisation; refuses empty or whitespace-only files."""
    n, printable = 0, False
    for chunk in stream_file(path):
        n += len(chunk)
        printable = printable or not chunk.isspace()
    check_nonblank(n, printable, str(path))
    return n


# --------------------------------------------------------------------------------------------
# The one splitter

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


class Source:
    """A corpus as split-tagged pieces of text, in an order it repeats as often as asked.
    `works` names what each split holds; `chars` is the total size when known (progress bars)."""

    def __init__(self, info: dict, pieces: Callable[[], Iterator[tuple[str, str]]],
                 works: dict[str, list[str]], chars: int | None):
        self.info, self._pieces, self.works, self.chars = info, pieces, works, chars

    def pieces(self) -> Iterator[tuple[str, str]]:
        return self._pieces()


Document = Callable[[], Iterable[str]]     # a document's text, chunk by chunk, on each call


def split_documents(docs: dict[str, Document], sizes: dict[str, int], info: dict) -> Source:
    """The Source of named documents of known sizes (characters), split as the module says.
    Held-out documents are joined by newlines in the order of their names; a contiguous split
    joins them in the order given."""
    if len(docs) >= 3:
        plan = plan_split(sizes)

        def pieces():
            for split in SPLITS:
                for i, name in enumerate(plan[split]):
                    if i:
                        yield split, "\n"
                    for chunk in docs[name]():
                        yield split, chunk
        return Source(info, pieces, plan, sum(sizes.values()))
    names = list(docs)
    n = sum(sizes.values()) + len(names) - 1                  # documents joined by newlines
    a, b = span_bounds(n)
    tag = "+".join(names)

    def pieces():
        pos = 0
        for chunk in _joined(docs[name] for name in names):
            lo, hi = pos, pos + len(chunk)
            for split, (s0, s1) in zip(SPLITS, ((0, a), (a, b), (b, n))):
                if hi > s0 and lo < s1:
                    yield split, chunk[max(s0, lo) - lo:min(s1, hi) - lo]
            pos = hi
    return Source(info, pieces, {s: [tag] for s in SPLITS}, n)


def _joined(docs: Iterable[Document]) -> Iterator[str]:
    for i, doc in enumerate(docs):
        if i:
            yield "\n"
        yield from doc()


def in_memory_source(works: dict[str, str], info: dict) -> Source:
    """The Source of works held in memory as strings."""
    names = sorted(works)
    return split_documents({n: (lambda t=works[n]: [t]) for n in names},
                           {n: len(works[n]) for n in names}, info)

