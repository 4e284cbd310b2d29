"""Tokenizers and corpora beyond character-level Shakespeare: BPE, streaming, datasets, fallback."""
import json

import numpy as np
import pytest

import offbyone.corpora.hf as HF
import offbyone.corpora.text as CT
import offbyone.tokens as TK
from offbyone.config import ConfigError, TrainConfig
from offbyone import report as R
from offbyone.corpora import CorpusError, CorpusUnreachable
from offbyone.tokens import TokenData
from offbyone.data import (corpus_of, fell_back, prepare,
                           prepare_for)
from offbyone.metrics import token_classes
from offbyone.tokenizer import BOS, BPETokenizer, subword_classes


def test_bpe_is_deterministic_and_reloads(tiny_corpus, tmp_path):
    a = prepare(str(tiny_corpus), tmp_path / "a", tokenizer="bpe", bpe_vocab_size=300, verbose=False)
    b = prepare(str(tiny_corpus), tmp_path / "b", tokenizer="bpe", bpe_vocab_size=300, verbose=False)
    assert a.name == "tiny_bpe300"
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    assert ma["splits"] == mb["splits"] and ma["vocab_size"] == 300 and ma["dtype"] == "uint16"
    data = TokenData(a)
    assert data.itos[data.bos_id] == BOS and data.bos_id == 299
    assert data.splits["train"].max() < data.bos_id                 # BOS never comes from text
    text = tiny_corpus.read_text()
    n_train = ma["splits"]["train"]["chars"]
    assert data.decode(data.splits["train"]) == text[:n_train]        # lossless round trip
    assert ma["splits"]["train"]["tokens"] < 0.8 * n_train             # it does compress
    tok = BPETokenizer.load(a / "tokenizer.json")
    assert list(tok.encode("the king")) == list(data.tokenizer.encode("the king"))


def test_subword_token_classes():
    itos = [" the", ",", " ", "\n\n", "ing", " 42", "'s", "--", BOS]
    c = subword_classes(itos)
    assert c == {"delimiter": [1, 2, 3, 7], "word_start": [0, 5]}
    masks = token_classes(itos, 8, c)
    assert masks["delimiter"].tolist() == [False, True, True, True, False, False, False, True, False]
    assert masks["word_start"].tolist() == [True, False, False, False, False, True, False, False, False]
    assert masks["bos"][8] and not masks["delimiter"][8]


def test_streamed_preparation_equals_in_memory(tmp_path, monkeypatch):
    text = ("Ünïcödé line one\r\nsecond — line\r\n" * 300) + "καλημέρα\rend\n"
    f = tmp_path / "u.txt"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    whole = prepare(str(f), tmp_path / "whole", verbose=False)
    monkeypatch.setattr(CT, "CHUNK_BYTES", 7)           # chunks cut UTF-8 sequences and \r\n pairs
    chunked = prepare(str(f), tmp_path / "chunked", verbose=False)
    for split in ("train", "val", "test"):
        assert (whole / f"{split}.bin").read_bytes() == (chunked / f"{split}.bin").read_bytes()
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    data = TokenData(chunked)
    joined = "".join(data.decode(data.splits[s]) for s in ("train", "val", "test"))
    assert joined == norm


def test_text_without_newlines_streams_in_bounded_pieces(tmp_path, monkeypatch):
    f = tmp_path / "oneline.txt"
    text = " ".join(f"word{i}" for i in range(20_000))             # 150k characters, one line
    f.write_text(text)
    monkeypatch.setattr(CT, "CHUNK_BYTES", 4096)
    calls = []
    real = TK._lines_batches
    monkeypatch.setattr(TK, "_lines_batches", lambda buf: calls.append(len(buf)) or real(buf))
    out = prepare(str(f), tmp_path / "d", tokenizer="bpe", bpe_vocab_size=300, verbose=False)
    data = TokenData(out)
    assert "".join(data.decode(data.splits[s]) for s in ("train", "val", "test")) == text
    assert len(calls) > 10 and max(calls) < 3 * 4096                # never the whole text at once


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for r in ((0x3400, 0x4DC0), (0x4E00, 0x9FFF), (0x20000, 0x2A6D0)) for c in range(*r)]
    assert len(chars) > 65536
    f = tmp_path / "wide.txt"
    f.write_text("".join(chars) + "".join(chars[:1000]))
    out = prepare(str(f), tmp_path / "d", verbose=False)
    data = TokenData(out)
    assert data.meta["dtype"] == "uint32" and data.dtype == np.uint32
    assert data.vocab_size == len(chars) + 1
    assert (out / "train.bin").stat().st_size == 4 * data.meta["splits"]["train"]["tokens"]


def test_token_cap(tiny_corpus, tmp_path):
    out = prepare(str(tiny_corpus), tmp_path, max_tokens=9000, verbose=False)
    meta = json.loads((out / "meta.json").read_text())
    assert out.name == "tiny_char_max9000"
    assert meta["splits"]["train"]["tokens"] == 9000
    assert meta["splits"]["val"]["tokens"] == 500 == meta["splits"]["test"]["tokens"]


datasets = pytest.importorskip("datasets")


def test_datasets_local_loaders(tmp_path):
    docs = [f"Story {i}: the cat sat on the mat, and then it slept." for i in range(400)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n"
                                              for i, d in enumerate(docs)))
    out = prepare(f"hf:json:{tmp_path}/*.jsonl", tmp_path / "d", tokenizer="bpe",
                  bpe_vocab_size=280, verbose=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["kind"] == "hf" and meta["source"]["loader"] == "json"
    assert meta["source"]["sha256"]
    data = TokenData(out)
    val = data.decode(data.splits["val"])
    assert val == "".join(d + "\n" for i, d in enumerate(docs) if i % 20 == 0)   # 1 in 20
    with pytest.raises(CorpusError, match="rows have no field 'body'; fields: text, id"):
        prepare(f"hf:json:{tmp_path}/*.jsonl", tmp_path / "e", text_field="body", verbose=False)
    with pytest.raises(CorpusError, match="no local files match"):
        prepare(f"hf:json:{tmp_path}/*.parquet", tmp_path / "e", verbose=False)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_offline_hub_dataset_fails_fast_with_alternatives(tmp_path, monkeypatch, tiny_corpus):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusUnreachable, match="'roneneldan/TinyStories' cannot be streamed: "
                                                "HF_HUB_OFFLINE is set. Offline alternatives"):
        prepare("hf:roneneldan/TinyStories", tmp_path, verbose=False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HF, "HF_HOST", "offbyone.invalid")          # no network: a quick refusal
    with pytest.raises(CorpusUnreachable, match="cannot reach offbyone.invalid"):
        prepare("hf:roneneldan/TinyStories", tmp_path, verbose=False)
    cfg = {"corpus": "hf:roneneldan/TinyStories", "corpus_fallback": str(tiny_corpus),
           "data_root": str(tmp_path), "tokenizer": "char"}
    out = prepare_for(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert out.name == "tiny_char" and fell_back(cfg, meta)
    assert corpus_of(meta) == str(tiny_corpus.resolve())
    assert not fell_back({**cfg, "corpus": str(tiny_corpus)}, meta)       # asked for what it used
    sentence, note, _ = R.corpus_description({"source": meta["source"], "tokenizer": "char",
                                              "vocab_size": 9, "splits": {}, "fell_back": True,
                                              "asked_for": cfg["corpus"], "corpus": corpus_of(meta)})
    assert "hf:roneneldan/TinyStories" in note and "fallback corpus" in note
    with pytest.raises(CorpusUnreachable):
        prepare_for({**cfg, "corpus_fallback": ""})


def test_config_checks_tokenizer_keys():
    with pytest.raises(ConfigError, match="unknown tokenizer 'wordpiece'; valid choices: char, bpe"):
        TrainConfig(tokenizer="wordpiece")
    with pytest.raises(ConfigError, match="bpe_vocab_size must be >= 260"):
        TrainConfig(tokenizer="bpe", bpe_vocab_size=100)
    with pytest.raises(ConfigError, match="max_tokens must be >= 0"):
        TrainConfig(max_tokens=-1)
