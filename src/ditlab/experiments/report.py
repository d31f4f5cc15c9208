"""``ditlab ablate FILE --out DIR --report``: the results tables and plots of a study written again from its score
files, with nothing trained, sampled or scored: after an upgrade of ditlab (a table that gained a column), or on a
machine without a GPU from a study's collected archive (`scripts/speedrun_study.sh restore`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ditlab.experiments.ablation_spec import AblationSpec


def write_reports(spec: AblationSpec, out, stage_name: Optional[str] = None,
                  log: Callable[[str], None] = print) -> list[Path]:
    """Write results.md / .csv / the plots of every stage (or of ``stage_name``) from OUT's score files, the later
    stages' variants chosen by the earlier stages' rankings as the runner chooses them; a stage after one that is
    not complete has no variants yet and is left out, with a line that says so. Like the runner, a stage takes the
    scores of the same budget and sampling from the stage before it (stages.carried_scores) and stages.md is
    written again. Returns the files written."""
    from ditlab.experiments.ablation import EXIT_MORE_TO_DO, check_variants
    from ditlab.experiments.results import write_results
    from ditlab.experiments.stages import run_stages

    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"ablate --report: {out} does not exist: no score files to report")
    written: list[Path] = []

    def report_stage(plain: AblationSpec, folder: Path, budget_s: float, only) -> int:
        written.extend(write_results(folder, plain, {}))  # {}: the header names the score files' own reference
        return 0

    stopped = False
    if spec.stages:
        # load_data=False: a combination is checked with what its trained runs recorded (as --plan does)
        stopped = run_stages(spec, out, report_stage, stage_name=stage_name, log=log,
                             load_data=False) == EXIT_MORE_TO_DO
    else:
        check_variants(spec, [])  # the default paths, which the tables list
        report_stage(spec, out, 0.0, ())
    for path in written:
        log(f"ditlab ablate: wrote {path}")
    if stopped:
        log("ditlab ablate: --report stops at the first stage that is not complete: the stages after it have no "
            "variants yet")
    return written
