"""The ablation's plots (ditlab.experiments.results_plots): results.png and the paired differences' plots, written by
write_results beside the tables."""
import pytest

from tests.experiments.test_pairs import _baseline_file, _eval_pairs_file, _leave_one_out_file
from tests.experiments.test_results import _record

def test_the_plot_marks_each_training_seed(tmp_path, monkeypatch):
    """results.png: a bar per pair at the seeds' mean, and a point per seed where there are several."""
    import matplotlib.axes

    from ditlab.experiments.results_plots import plot_results

    points = []
    real_scatter = matplotlib.axes.Axes.scatter

    def scatter(self, x, y, *a, **k):
        points.extend(zip(x, y))
        return real_scatter(self, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    one_seed = {**_record(0, 9.0, 300), "variant": "w"}
    path = plot_results(tmp_path / "results.png", [_record(0, 10.0, 313), _record(1, 12.0, 398), one_seed])
    assert path.stat().st_size > 0
    assert sorted(points) == [(10.0, 0), (12.0, 0)]  # v's two seeds on its bar; w's single value is its bar

def test_the_leave_one_out_plot_sets_each_seed_beside_the_seed_noise(tmp_path, monkeypatch):
    """results_leave_one_out.png: a row per change and path, each seed's difference as a point, their mean as a bar,
    and a band of the mean's 95% interval (Student's t on the pooled seed noise's 2 df; wider for the pair with
    one seed); written by
    write_results only when the stage has leave-one-out variants."""
    import json

    import matplotlib.axes

    from ditlab.experiments.pairs import leave_one_out_pairs
    from ditlab.experiments.results import write_results

    spec, named_only, records = _leave_one_out_file(tmp_path)
    pairs = leave_one_out_pairs(spec, records)
    assert [(p.left_out, p.label, p.seeds) for p in pairs] == [("lr", "default", (0, 1)), ("swiglu", "default", (0,))]
    assert pairs[0].diffs == pytest.approx((2.0, 2.4)) and pairs[1].diffs == pytest.approx((-0.1,))
    assert pairs[0].seed_sd == pytest.approx(0.2 ** 0.5) == pairs[1].seed_sd and pairs[0].seed_df == 2
    assert pairs[0].two_se == pytest.approx(2 * 0.2 ** 0.5) and pairs[1].two_se == pytest.approx(2 * 0.4 ** 0.5)
    assert leave_one_out_pairs(named_only, records) == []

    points, bars = [], []
    real_scatter, real_barh = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.barh

    def scatter(self, x, y, *a, **k):
        points.extend(zip(x, y))
        return real_scatter(self, x, y, *a, **k)

    def barh(self, y, width, *a, **k):
        if isinstance(y, int):  # the leave-one-out plot's one bar per call (results.png draws all in one)
            bars.append((y, round(width, 6), round(k.get("left", 0.0), 6)))
        return real_barh(self, y, width, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    monkeypatch.setattr(matplotlib.axes.Axes, "barh", barh)
    for v in [*spec.variants, *named_only.variants]:
        v.paths = ["default"]  # what ablation.check_variants fills in before a stage runs
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    for i, r in enumerate(records):
        (out / "scores" / f"{i}.json").write_text(json.dumps(r))
    written = [p.name for p in write_results(out, spec, {})]
    assert "results_leave_one_out.png" in written and (out / "results_leave_one_out.png").stat().st_size > 0
    loo = [(x, row) for x, row in points if x < 3]  # results.png's points are FIDs (>= 7.0)
    assert sorted((round(x, 6), row) for x, row in loo) == [(-0.1, 1), (2.0, 0), (2.4, 0)]
    # the bands: +- the 95% interval around zero, t at 0.975 with 2 df (4.3027) times the standard error
    assert pairs[0].ci95 == pytest.approx(4.3027 * 0.2 ** 0.5) and pairs[1].ci95 == pytest.approx(4.3027 * 0.4 ** 0.5)
    for row, pair in enumerate(pairs):
        assert (row, round(2 * pair.ci95, 6), round(-pair.ci95, 6)) in bars
    assert (0, 2.2, 0.0) in bars and (1, -0.1, 0.0) in bars  # the means
    (out / "results_leave_one_out.png").unlink()
    assert "results_leave_one_out.png" not in [p.name for p in write_results(out, named_only, {})]

def _paths_of(variant) -> list[str]:
    """The paths ablation.check_variants fills in for the files above: lift's two, one for the others."""
    return ["diagonal", "dp-hi"] if variant.name == "lift" else ["default"]

@pytest.mark.parametrize("file, png, key", [(_baseline_file, "results_against_baseline.png", "baseline"),
                                             (_eval_pairs_file, "results_evals.png", "eval_pairs")])
def test_a_paired_plot_is_written_beside_its_table(tmp_path, file, png, key):
    """results_against_baseline.png (`baseline:`) and results_evals.png (`eval_pairs:`): written by write_results
    when the file has the key and pairs exist, and not without the key."""
    import dataclasses
    import json

    from ditlab.experiments.results import write_results

    spec, records = file(tmp_path)
    for v in spec.variants:
        v.paths = _paths_of(v)
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    for i, r in enumerate(records):
        (out / "scores" / f"{i}.json").write_text(json.dumps(r))
    assert png in [p.name for p in write_results(out, spec, {})]
    assert (out / png).stat().st_size > 0
    (out / png).unlink()
    empty = "" if key == "baseline" else {}
    assert png not in [p.name for p in write_results(out, dataclasses.replace(spec, **{key: empty}), {})]
