"""Does the softmax baseline show what softmax1 is meant to cure? Each sign the literature
describes, with the threshold at which we call it present and where that threshold comes from.
"""
from __future__ import annotations

import pandas as pd

from .latex import Tex, fmt
from .prose import disease_signs


def baseline(R) -> pd.DataFrame:
    nat = disease_signs(R.fin)
    tbs = disease_signs(R.testbed_fin) if R.testbed_fin is not None else []

    def cell(d):
        return Tex(f"{d['value']} ({'yes' if d['present'] else 'no'})")
    rows = [{"sign": d["sign"], "present when": d["criterion"], "threshold from": d["source"],
             R.study_label: cell(d), **({"testbed": cell(tbs[i])} if tbs else {})}
            for i, d in enumerate(nat)]
    rag = ">{\\raggedright\\arraybackslash}"
    table = R.table(rows, "disease.tex", f"{rag}p{{2.4cm}}{rag}p{{3.8cm}}{rag}p{{2.9cm}}"
                    + f"{rag}p{{2.3cm}}" * (1 + bool(tbs)))

    def listed(signs):
        return ", ".join(d["sign"] for d in signs if d["present"]) or "none"
    M = R.sections["disease"] = {
        "DiseaseCountNatural": fmt(sum(d["present"] for d in nat)),
        "DiseaseSigns": fmt(len(nat)), "DiseaseListNatural": listed(nat)}
    if tbs:
        M.update(DiseaseCountTestbed=fmt(sum(d["present"] for d in tbs)),
                 DiseaseListTestbed=listed(tbs))
    return table
