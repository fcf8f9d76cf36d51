"""Reports: everything under a storage's results folder, from the storage alone (nothing is retrained).

    summary.py     the summary table (csv, md), the comparison chart, per-study charts, the index page
    comparison.py  columns across trials: test scores over seeds, the start-up spread, vs bp, efficiency, alignment
    curves.py      learning curves and alignment charts of the best trials
    stats.py       Student-t intervals and Welch's test
    folders.py     which folder a storage's results go to, the plotly bundle
    workspace.py   what the notebook calls

    from hpo import report
    report.write_reports("studies/bundled.journal")      # python -m hpo.report --storage studies/bundled.journal
"""

from hpo.report.folders import results_dir_for
from hpo.report.summary import load_studies, print_summary, summarize, write_reports

__all__ = ["load_studies", "print_summary", "results_dir_for", "summarize", "write_reports"]
