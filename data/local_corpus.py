"""Build a large local corpus from text already on this machine, for testing preparation at scale.

    python data/local_corpus.py OUT.jsonl [--mb 60] [--root DIR ...]

Writes JSON lines {"text": ..., "path": ...}, one per UTF-8 source or documentation file found
under the roots (Python sources, reStructuredText, Markdown, plain text), in sorted order, until
the file holds --mb megabytes. No network. Prepare it through the `datasets` JSON loader:

    python -m offbyone.data --corpus 'hf:json:OUT.jsonl' --tokenizer bpe --bpe-vocab-size 8192
"""
import argparse
import json
import os
import sys
from pathlib import Path

SUFFIXES = (".py", ".rst", ".md", ".txt")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=60.0)
    ap.add_argument("--root", action="append", default=None,
                    help="folders to read (default: this Python's standard library and site-packages)")
    args = ap.parse_args(argv)
    roots = args.root or sorted({os.path.dirname(os.__file__),
                                 *[p for p in sys.path if p.endswith("site-packages")]})
    target = int(args.mb * 1e6)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    size = n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    if not name.endswith(SUFFIXES):
                        continue
                    try:
                        text = Path(dirpath, name).read_text(encoding="utf-8")
                    except (UnicodeDecodeError, OSError):
                        continue
                    if not text.strip():
                        continue
                    line = json.dumps({"text": text, "path": os.path.join(dirpath, name)}) + "\n"
                    f.write(line)
                    size += len(line.encode())
                    n += 1
                    if size >= target:
                        break
                if size >= target:
                    break
            if size >= target:
                break
    os.replace(tmp, out)
    print(f"wrote {out}: {n:,} documents, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
