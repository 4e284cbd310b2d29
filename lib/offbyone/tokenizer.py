"""Tokenizers of a prepared corpus: characters, or a byte-level BPE trained on the training split.

Both map text to ids and back and list every id's string (`itos`), with `<bos>` as the last id.
The BPE is trained offline with the `tokenizers` package (deterministic for a given corpus and
vocabulary size) and saved beside the token arrays as `tokenizer.json`.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

import numpy as np

BOS = "<bos>"
TOKENIZERS = ("char", "bpe")
BPE_MIN_VOCAB = 260              # the 256 byte symbols, <bos> and a few merges
PUNCTUATION = set(string.punctuation)


def check_tokenizer(kind: str, vocab_size: int) -> None:
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {kind!r}; valid choices: {', '.join(TOKENIZERS)}")
    if kind == "bpe" and not (BPE_MIN_VOCAB <= vocab_size <= 2 ** 32 - 1):
        raise ValueError(f"bpe_vocab_size must be >= {BPE_MIN_VOCAB}, got {vocab_size}")


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        self.itos = chars + [BOS]
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.bos_id = len(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        stoi = self.stoi
        return np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation) from the `tokenizers` package."""
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.bos_id = tok.token_to_id(BOS)
        if self.bos_id != tok.get_vocab_size() - 1:
            raise ValueError(f"the BPE's {BOS} must be its last id")
        self.itos = [tok.decode([i]) for i in range(self.bos_id)] + [BOS]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[])
        tok.train_from_iterator(texts, trainer=trainer)
        tok.add_special_tokens([BOS])          # the last id, never produced from text
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64)
                for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        return self.tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(data_dir: str | Path, meta: dict):
    """The tokenizer of a prepared corpus (char: from meta's itos; bpe: tokenizer.json)."""
    kind = meta.get("tokenizer", "char")
    if kind == "bpe":
        return BPETokenizer.load(Path(data_dir) / "tokenizer.json")
    if kind == "char":
        return CharTokenizer(meta["itos"][:-1])
    return None                               # synthetic corpora: ids only


def subword_classes(itos: list[str]) -> dict[str, list[int]]:
    """Token classes for subword vocabularies: 'delimiter' (tokens made only of whitespace or
    punctuation) and 'word_start' (tokens that begin with whitespace and hold a letter or
    digit, i.e. the tokens that start a word)."""
    delim, start = [], []
    for i, s in enumerate(itos):
        if s == BOS or not s:
            continue
        if all(c.isspace() or c in PUNCTUATION for c in s):
            delim.append(i)
        elif s[0].isspace() and any(c.isalnum() for c in s):
            start.append(i)
    return {"delimiter": delim, "word_start": start}


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2 ** 16 else "uint32"
