"""Two protocols of one grid side by side: what each cost and what each answered, per study.

    python -m benchmarks.protocols                     # the full Fashion-MNIST MLP grid against the halving one
    python -m benchmarks.protocols --reference studies/fashion-mnist.journal \\
        --cheaper studies/fashion-mnist-halving.journal --output results/benchmarks/protocols.md
    python -m benchmarks.protocols --cheaper studies/fashion-mnist-halving.journal \\
        studies/fashion-mnist-halving-seed1.journal     # the best of two runs by CV (see below)

Per study of the same name in both storages: busy hours (the union of the trials' time intervals, from each trial's
start to its end as the storage recorded them: pauses between sittings do not count, and trials that ran at once on
parallel workers count once), finished trials and how many completed, best CV, the chosen configuration, the test
mean ± 95% CI over its seeds, the cheaper protocol's test mean minus the reference's with Welch's p, and whether
the two answers are the same (``same_answer``). Nothing is trained: both storages hold what their grids measured.

Several ``--cheaper`` storages are one protocol run several times (other study seeds): each study is answered by
the run whose best CV is highest (never by a test score), and the protocol's cost is the union of every run's
trials. A study counts once every run of it is test-scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.files import write_text
from hpo.record import read_study
from hpo.report.stats import summarize_scores, welch
from hpo.storage import open_storage, study_names

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SAME_WITHIN = 0.003  # test means this close (0.3 points) are the same answer ...
SAME_P = 0.05  # ... and so are means Welch's test does not tell apart at this level


def busy_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of ``intervals`` (start, end)."""
    total, end_of_union = 0.0, None
    for start, end in sorted(intervals):
        if end_of_union is None or start > end_of_union:
            total += (end - start).total_seconds()
            end_of_union = end
        elif end > end_of_union:
            total += (end - end_of_union).total_seconds()
            end_of_union = end
    return total


def intervals(study: optuna.Study) -> list[tuple[datetime, datetime]]:
    return [(t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False, states=FINISHED)
            if t.datetime_start is not None and t.datetime_complete is not None]


def same_answer(cheaper: list[float], reference: list[float]) -> bool:
    """Whether two protocols' test scores are the same answer: means within 0.3 points, or not different by
    Welch's test (p >= 0.05)."""
    comparison = welch(cheaper, reference)
    return abs(comparison.delta) <= SAME_WITHIN or comparison.p >= SAME_P


def row(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    test = read_study(study).test
    scores = list(test.scores) if test is not None else []
    return {"busy_s": busy_seconds(intervals(study)), "finished": len(trials),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials), "best": study.best_value,
            "params": study.best_params, "test": scores, "pruner": read_study(study).pruner or "median"}


def configuration(params: dict) -> str:
    """The chosen configuration in a few words: ``3x512 relu, adam 1.4e-04, batch 32``."""
    parts = []
    if "depth" in params:
        parts.append(f"{params['depth']}x{params['width']} {params.get('activation', '')}".strip())
    lr = params.get("lr_adam", params.get("lr_sgd"))
    if lr is not None:
        parts.append(f"{params.get('optimizer', '')} {lr:.1e}".strip())
    parts.append(f"batch {params.get('batch_size')}")
    if "feedback_scale" in params:
        parts.append(f"B {params.get('feedback_distribution')} x{params['feedback_scale']:.2g}")
    if "kp_decay_per_step" in params:
        parts.append(f"decay {params['kp_decay_per_step']:.1e}")
    return ", ".join(parts)


def best_by_cv(runs: list[dict]) -> dict:
    """The run that answers a study: the highest best CV (ties: the first). Its cost is every run's together."""
    chosen = max(runs, key=lambda r: r["best"])
    return {**chosen, "busy_s": sum(r["busy_s"] for r in runs), "run": runs.index(chosen),
            "test": chosen["test"] if all(r["test"] for r in runs) else []}


def compare(reference: str, cheaper: list[str]) -> tuple[list[tuple[str, dict, dict]], float, float]:
    """Rows of the studies in every storage, and each protocol's busy seconds (the union over all its trials; the
    cheaper one's over every run)."""
    stores = [open_storage(path, create=False) for path in (reference, *cheaper)]
    names = sorted(set.intersection(*(set(study_names(store)) for store in stores)))
    rows, spans = [], ([], [])
    for name in names:
        studies = [optuna.load_study(study_name=name, storage=store) for store in stores]
        rows.append((name, row(studies[0]), best_by_cv([row(study) for study in studies[1:]])))
        spans[0].extend(intervals(studies[0]))
        for study in studies[1:]:
            spans[1].extend(intervals(study))
    return rows, busy_seconds(spans[0]), busy_seconds(spans[1])


def text(reference: str, cheaper: list[str], rows: list[tuple[str, dict, dict]], busy: tuple[float, float]) -> str:
    def test(r: dict) -> str:
        s = summarize_scores(r["test"])
        return f"{s.mean:.4f} ± {s.ci95:.4f} (n={s.n})" if s.n else ""

    scored = [(name, ref, new) for name, ref, new in rows if ref["test"] and new["test"]]
    lines = [
        "# One grid, two protocols: cost and answers", "",
        f"`python -m benchmarks.protocols --reference {reference} --cheaper {' '.join(cheaper)}`. Busy hours: the "
        "union of the trials' time intervals (parallel workers and pauses counted honestly); test: the chosen "
        "configuration retrained with every stored seed, mean ± 95% CI; Δ test: cheaper minus reference, Welch's p."
        + (f" The cheaper protocol is {len(cheaper)} runs (study seeds): each study is answered by the run with "
           "the best CV (run 1, 2, ... in the order given), its busy hours are all runs' together, and it counts "
           "once every run is test-scored." if len(cheaper) > 1 else ""), "",
        f"**Whole grid: {busy[0] / 3600:.2f} h against {busy[1] / 3600:.2f} h busy "
        f"({busy[1] / busy[0]:.0%} of the reference's, {busy[0] / busy[1]:.1f}x cheaper). Same answer (test means "
        f"within {SAME_WITHIN * 100:.1f} points, or Welch's p >= {SAME_P}): "
        f"{sum(same_answer(new['test'], ref['test']) for _, ref, new in scored)} of {len(scored)} studies"
        + (f" ({len(rows) - len(scored)} more not yet test-scored in both)" if len(scored) < len(rows) else "")
        + ".**", "",
        "| study | busy h (ref / cheaper) | complete / finished (ref / cheaper) | best CV (ref / cheaper) | "
        "test, reference | test, cheaper | Δ test | p | same answer |",
        "|---|---|---|---|---|---|---:|---:|---|",
    ]
    for name, ref, new in rows:
        if not (ref["test"] and new["test"]):
            lines.append(f"| {name} | {ref['busy_s'] / 3600:.2f} / {new['busy_s'] / 3600:.2f} | {ref['complete']}/"
                         f"{ref['finished']} / {new['complete']}/{new['finished']} | | {test(ref)} | {test(new)} | | | "
                         "not yet test-scored |")
            continue
        comparison = welch(new["test"], ref["test"])
        lines.append(
            f"| {name} | {ref['busy_s'] / 3600:.2f} / {new['busy_s'] / 3600:.2f} | {ref['complete']}/{ref['finished']}"
            f" / {new['complete']}/{new['finished']} | {ref['best']:.4f} / {new['best']:.4f} | {test(ref)} | "
            f"{test(new)} | {comparison.delta:+.4f} | {comparison.p:.3f} | "
            f"{'yes' if same_answer(new['test'], ref['test']) else 'no'} |"
        )
    lines += ["", "Chosen configurations (reference / cheaper):", ""]
    for name, ref, new in rows:
        run = f" (run {new['run'] + 1})" if len(cheaper) > 1 else ""
        lines.append(f"- `{name}`: {configuration(ref['params'])} / {configuration(new['params'])}{run}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="studies/fashion-mnist.journal")
    parser.add_argument("--cheaper", nargs="+", default=["studies/fashion-mnist-halving.journal"],
                        help="the cheaper protocol's storage, or several runs of it (answered by the best CV)")
    parser.add_argument("--output", default="results/benchmarks/protocols.md")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, *busy = compare(args.reference, args.cheaper)
    output = text(args.reference, args.cheaper, rows, (busy[0], busy[1]))
    write_text(Path(args.output), output)
    if args.json:
        write_text(Path(args.json), json.dumps(rows, indent=1, default=str) + "\n")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
