"""ditlab.experiments.study_files: a study's scores and runs at their two levels, never a walk into the runs."""
from __future__ import annotations

from ditlab.experiments.study_files import study_files


def test_study_files_finds_both_levels_and_stays_out_of_the_runs(tmp_path):
    wanted = [tmp_path / "scores" / "a-s0__default.json", tmp_path / "final" / "scores" / "b-s1__default__cfg.json"]
    # inside a run folder (checkpoints a training renames and removes): never scanned
    deep = tmp_path / "final" / "runs" / "b-s1" / "checkpoints" / "scores" / "c.json"
    for path in (*wanted, deep):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert study_files(tmp_path, "scores/*.json") == sorted(wanted)
    model = tmp_path / "final" / "runs" / "b-s1" / "model.json"
    model.write_text("{}")
    assert study_files(tmp_path, "runs/*/model.json") == [model]
    assert study_files(tmp_path / "nowhere", "scores/*.json") == []
