"""From results files to the paper: every number the paper prints comes through here.

    results   the measurement JSONs of a profile's runs as tidy tables
    stats     paired statistics over seeds; the disease signs and their thresholds
    prose     sentences and cells generated from the statistics (effects, corpus, criteria)
    latex     numbers and text as LaTeX: formatting, escaping, macro names, macros, tables
    figures   the figures' style and the plots they repeat
    sections  the report notebook's sections: `Report(profile)`, one method a section
"""
from .latex import (Tex, fmt, latex, latex_escape, latex_table, macro_name, mean_sd, num, pct,
                    write_macros)
from .prose import corpus_description, criterion, disease_signs, effect_sentence
from .results import collect, corpus_info, final, per_layer, published_table, windowed
from .sections import Report
from .stats import (CONFIDENCE, DISEASE_SIGNS, METRICS, VARIANT_LABELS, paired_difference,
                    paired_differences)

__all__ = ["Tex", "fmt", "latex", "latex_escape", "latex_table", "macro_name", "mean_sd", "num",
           "pct", "write_macros", "corpus_description", "criterion", "disease_signs",
           "effect_sentence", "collect", "corpus_info", "final", "per_layer", "published_table",
           "windowed", "Report", "CONFIDENCE", "DISEASE_SIGNS", "METRICS", "VARIANT_LABELS",
           "paired_difference", "paired_differences"]
