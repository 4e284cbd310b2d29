"""Does the paper fit its pages? Checks of the LaTeX log, the source and the generated macros
that CI runs after `make paper` (and `make paper` prints as warnings):

- no overfull box wider than 1 pt in the LaTeX log (a table or a line running into the margin);
- no table scaled (\\resizebox, \\scalebox) and no font below 8 pt (\\tiny) in the source: a
  table that does not fit is split or transposed, never shrunk or blown up;
- the bibliography behind a \\FloatBarrier, so that no float lands inside the references;
- an abstract of at most ABSTRACT_MAX_WORDS words.

    python -m offbyone.report.layout [--log build/paper/latex/main.log] [--tex paper/main.tex]
                                     [--macros paper/generated/macros.tex] [--warn-only]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .synthesis import ABSTRACT_MAX_WORDS, word_count

OVERFULL_TOLERANCE_PT = 1.0
_OVERFULL = re.compile(r"Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too (?:wide|high)\)(.*)")


def overfull_boxes(log: str, tolerance: float = OVERFULL_TOLERANCE_PT) -> list[str]:
    """The overfull boxes wider than `tolerance` points, each with the file being read."""
    out, current = [], "?"
    for line in log.splitlines():
        opened = re.findall(r"\(\./([^\s()]+\.tex)", line)
        if opened:
            current = opened[-1]
        m = _OVERFULL.search(line)
        if m and float(m.group(1)) > tolerance:
            out.append(f"{m.group(1)} pt too wide{m.group(2)} (after {current})")
    return out


def source_problems(tex: str) -> list[str]:
    """Scaled tables, fonts below 8 pt, and references without a float barrier before them."""
    body = "\n".join(line.split("%", 1)[0] for line in tex.splitlines())
    problems = []
    for cmd in ("resizebox", "scalebox"):
        if f"\\{cmd}" in body:
            problems.append(f"\\{cmd} in the source: split or transpose a wide table instead")
    if "\\tiny" in body:
        problems.append("\\tiny in the source: no text below 8 pt")
    bib = body.find("\\bibliography{")
    if bib >= 0 and "\\FloatBarrier" not in body[max(0, bib - 200):bib]:
        problems.append("no \\FloatBarrier right before \\bibliography: floats may land in the "
                        "references")
    return problems


def abstract_words(macros: str) -> int | None:
    """The generated abstract's word count (None when the macros hold no abstract)."""
    m = re.search(r"\\newcommand\{\\Abstract\}\{(.*)\}\s*$", macros, re.M)
    return word_count(m.group(1)) if m else None


def check(log_path, tex_path, macros_path) -> list[str]:
    problems = [f"overfull box: {o}" for o in overfull_boxes(Path(log_path).read_text(errors="replace"))]
    problems += source_problems(Path(tex_path).read_text())
    if Path(macros_path).exists():
        n = abstract_words(Path(macros_path).read_text())
        if n is not None and n > ABSTRACT_MAX_WORDS:
            problems.append(f"the abstract has {n} words (at most {ABSTRACT_MAX_WORDS})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", default="build/paper/latex/main.log")
    ap.add_argument("--tex", default="paper/main.tex")
    ap.add_argument("--macros", default="paper/generated/macros.tex")
    ap.add_argument("--warn-only", action="store_true", help="print the problems, exit 0")
    a = ap.parse_args(argv)
    if not Path(a.log).exists():
        print(f"{a.log} is not there: build the paper first (make paper)", file=sys.stderr)
        return 2
    problems = check(a.log, a.tex, a.macros)
    for p in problems:
        print(("warning: " if a.warn_only else "layout: ") + p, file=sys.stderr)
    if not problems:
        print("layout: no overfull box, no scaled table, references clear of floats, "
              "abstract within its words")
    return 0 if a.warn_only or not problems else 1


if __name__ == "__main__":
    sys.exit(main())
