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
    od = getattr(R, "outlier_data", None)           # the study where the disease grows
    ods = disease_signs(od["fin"]) if od else []
    td = getattr(R, "text_study_data", None)        # softmax1 on text at the sweep's dose
    tds = disease_signs(td["fin"]) if td else []

    def cell(d):
        return Tex(f"{d['value']} ({'yes' if d['present'] else 'no'})")
    rows = [{"sign": d["sign"], "present when": d["criterion"], "threshold from": d["source"],
             R.study_label: cell(d), **({"testbed": cell(tbs[i])} if tbs else {}),
             **({od["label"]: cell(ods[i])} if ods else {}),
             **({td["label"]: cell(tds[i])} if tds else {})}
            for i, d in enumerate(nat)]
    rag = ">{\\raggedright\\arraybackslash}"
    n = 1 + bool(tbs) + bool(ods) + bool(tds)
    width = {1: 2.3, 2: 2.3, 3: 1.9}.get(n, 1.6)
    table = R.table(rows, "disease.tex", f"{rag}p{{2.3cm}}{rag}p{{{3.2 if n < 4 else 2.8}cm}}"
                    f"{rag}p{{{2.4 if n < 4 else 2.1}cm}}" + f"{rag}p{{{width}cm}}" * n)

    def listed(signs):
        return ", ".join(d["sign"] for d in signs if d["present"]) or "none"
    M = R.sections["disease"] = {
        "DiseaseCountNatural": fmt(sum(d["present"] for d in nat)),
        "DiseaseSigns": fmt(len(nat)), "DiseaseListNatural": listed(nat)}
    if tbs:
        M.update(DiseaseCountTestbed=fmt(sum(d["present"] for d in tbs)),
                 DiseaseListTestbed=listed(tbs))
    M["HasDiseaseOut"] = "1" if ods else "0"
    if ods:
        M.update(DiseaseCountOut=fmt(sum(d["present"] for d in ods)), DiseaseListOut=listed(ods))
    M["HasDiseaseText"] = "1" if tds else "0"
    if tds:
        M.update(DiseaseCountText=fmt(sum(d["present"] for d in tds)), DiseaseListText=listed(tds))
    return table
