"""Does the softmax baseline show what softmax1 is meant to cure? Each sign the literature
describes, with the threshold at which we call it present and where that threshold comes from.
"""
from __future__ import annotations

import pandas as pd

from .latex import Tex, fmt
from .prose import disease_signs


def _columns(R) -> list[tuple[str, str, list[dict]]]:
    """(macro suffix, column label, signs) of every study whose baseline the table shows: the
    main study, then the testbed, the study where the disease grows and the text study at the
    sweep's dose where they are there."""
    cols = [("Natural", R.study_label, disease_signs(R.fin))]
    if R.testbed_fin is not None:
        cols.append(("Testbed", "testbed", disease_signs(R.testbed_fin)))
    for suffix, attr in (("Out", "outlier_data"), ("Text", "text_study_data")):
        data = getattr(R, attr, None)
        if data:
            cols.append((suffix, data["label"], disease_signs(data["fin"])))
    return cols


def baseline(R) -> pd.DataFrame:
    cols = _columns(R)
    nat = cols[0][2]

    def cell(d):
        return Tex(f"{d['value']} ({'yes' if d['present'] else 'no'})")
    rows = [{"sign": d["sign"], "present when": d["criterion"], "threshold from": d["source"],
             **{label: cell(signs[i]) for _, label, signs in cols}}
            for i, d in enumerate(nat)]
    rag = ">{\\raggedright\\arraybackslash}"
    n = len(cols)
    width = {1: 2.3, 2: 2.3, 3: 1.9}.get(n, 1.6)
    table = R.table(rows, "disease.tex", f"{rag}p{{2.3cm}}{rag}p{{{3.2 if n < 4 else 2.8}cm}}"
                    f"{rag}p{{{2.4 if n < 4 else 2.1}cm}}" + f"{rag}p{{{width}cm}}" * n)

    def listed(signs):
        return ", ".join(d["sign"] for d in signs if d["present"]) or "none"
    M = R.sections["disease"] = {"DiseaseSigns": fmt(len(nat)), "HasDiseaseOut": "0",
                                 "HasDiseaseText": "0"}
    for suffix, _, signs in cols:
        M.update({f"DiseaseCount{suffix}": fmt(sum(d["present"] for d in signs)),
                  f"DiseaseList{suffix}": listed(signs)})
        if suffix in ("Out", "Text"):
            M[f"HasDisease{suffix}"] = "1"
    return table
