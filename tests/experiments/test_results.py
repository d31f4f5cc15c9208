"""The results table of `ditlab ablate`: one row per (variant, path, eval), seeds pooled."""
import csv

from ditlab.experiments.ablation_spec import load_ablation
from ditlab.experiments.results import write_markdown


def _record(seed, fid, steps):
    return {"variant": "v", "seed": seed, "path": "default", "eval": "", "fid": fid, "nfe": 49, "train_steps": steps,
            "train_images": steps * 256, "params": 33e6, "gflops_per_image": 6.1, "note": ""}


def test_seeds_with_different_step_counts_show_each(tmp_path):
    """Time-limited runs of two seeds take different numbers of steps: the row shows both, not the first."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")
    out = write_markdown(tmp_path / "results.md", spec, [_record(0, 10.0, 313), _record(1, 12.0, 398)], {})
    row = next(line for line in out.read_text().splitlines() if line.startswith("| v |"))
    assert "11.00 ± 1.41" in row and "| 356 (313, 398) |" in row and "| 91,008 (80,128, 101,888) |" in row
    out = write_markdown(tmp_path / "results.md", spec, [_record(0, 10.0, 313), _record(1, 12.0, 313)], {})
    row = next(line for line in out.read_text().splitlines() if line.startswith("| v |"))
    assert "| 313 | 80,128 |" in row


def test_time_to_fid_is_the_span_between_two_evaluations(tmp_path):
    """The first evaluation at or below the value and the one before it bound when a run reached it: the cell
    gives both (means over the seeds that reached it), "≤T" where the first evaluation already had."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nbudget: {eval_every: 4000}\n"
                                     "time_to_fid: [10, 7, 5]\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def rec(seed, curve):
        times = {"10": next(s for s, _, f in curve if f <= 10), "7": next((s for s, _, f in curve if f <= 7), None),
                 "5": None}
        return {**_record(seed, curve[-1][2], 300), "eval_curve": curve, "time_to_fid": times}

    records = [rec(0, [[190.0, 4000, 9.5], [380.0, 8000, 8.9], [570.0, 12000, 6.4]]),
               rec(1, [[186.0, 4000, 9.9], [370.0, 8000, 8.1], [560.0, 12000, 7.2]])]
    row = next(line for line in write_markdown(tmp_path / "results.md", spec, records, {}).read_text().splitlines()
               if line.startswith("| v |"))
    assert "| ≤188 | 380–570 (1/2 seeds) | — |" in row


def test_the_machines_of_the_scores_are_named(tmp_path):
    """One machine is named; two are a warning with their counts (a time budget buys other step counts on each);
    scores from before the machine was recorded are counted apart, not as a machine."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def text(*machines):
        records = [{**_record(i, 10.0, 300), **({"machine": m} if m else {})} for i, m in enumerate(machines)]
        return write_markdown(tmp_path / "results.md", spec, records, {}).read_text()

    assert "Machine: GPU A.\n" in text("GPU A", "GPU A")
    assert "Machine: GPU A (1 older score did not record it)." in text("GPU A", None)
    warned = text("GPU A", "GPU B", None)
    assert "**Scores from more than one machine**: GPU A (1 score), GPU B (1 score) (1 older score" in warned
    assert "Machine" not in text(None, None)


def test_a_poorly_fitted_posthoc_width_is_named(tmp_path):
    """A post-hoc EMA score records the profile fit error of its reconstruction (posthoc_fit_error): results.md
    names those over 5%, with the error; a good fit, a classic-EMA score and an older score without the field are
    not named."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0]\nevals: {cfg: {}, pe10: {ema_sigma_rel: 0.1}, "
                                     "pe20: {ema_sigma_rel: 0.2}, pe15: {ema_sigma_rel: 0.15}}\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")
    records = [{**_record(0, f, 300), "eval": e, **({"posthoc_fit_error": err} if err is not None else {})}
               for e, f, err in (("cfg", 7.7, None), ("pe10", 7.7, 0.0), ("pe20", 8.9, 0.068), ("pe15", 8.0, None))]
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    line = next(line for line in text.splitlines() if "shape poorly" in line)
    assert "(relative profile fit error over 5%): v-s0 / pe20 (6.8%)." in line
    assert "pe10" not in line and "pe15" not in line and "/ cfg" not in line
    records[2]["posthoc_fit_error"] = 0.021
    assert "shape poorly" not in write_markdown(tmp_path / "results.md", spec, records, {}).read_text()


def test_the_command_lines_overrides_are_stated(tmp_path):
    """ditlab ablate --set changes every variant's recipe: results.md says which (one line), warns when the scores
    were made with different ones (their rows compare different recipes), and counts older scores apart; the csv
    has them as a command line writes them."""
    from ditlab.experiments.results import write_csv

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1, 2]\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def records(*sets):
        return [{**_record(i, 10.0, 300), **({"command_overrides": list(s)} if s is not None else {})}
                for i, s in enumerate(sets)]

    def text(*sets):
        return write_markdown(tmp_path / "results.md", spec, records(*sets), {}).read_text()

    muon = ("optim.name=muon", "optim.lr=2e-3")
    assert "Overrides from the command line (--set), on every variant: `optim.name=muon` `optim.lr=2e-3`.\n" in text(
        muon, muon)
    assert "(1 older score did not record them)." in text(muon, muon, None)
    warned = text(muon, (), muon)
    assert ("**Scores made with different command-line overrides (--set)**: none (1 score); `optim.name=muon` "
            "`optim.lr=2e-3` (2 scores).") in warned
    assert "--set" not in text((), ()) and "--set" not in text(None, None)
    path = write_csv(tmp_path / "results.csv", records(muon, ()))
    rows = list(csv.DictReader(path.open()))
    assert [r["command_overrides"] for r in rows] == ["optim.name=muon optim.lr=2e-3", ""]


def test_recipe_overrides_leave_out_where_the_data_lies():
    from ditlab.experiments.ablation import recipe_overrides

    assert recipe_overrides(["data.path=/x.zip", "optim.lr=2e-3", " train.device = cuda:1", "model.mlp=swiglu"]) == [
        "optim.lr=2e-3", "model.mlp=swiglu"]


def test_the_header_names_the_reference_the_scores_were_compared_with(tmp_path):
    """The running scorer's reference, or (under --report, no scorer) the one the score files record; each with its
    count when the files name more than one or one other than the scorer's; a file without a record is counted."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1, 2]\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")
    a = {"ref": "/r/a.npz", "n_ref": 50000, "inception": "net.pt"}
    b = {"ref": "/r/b.npz", "n_ref": None, "inception": "net.pt"}

    def header(refs, scorer):
        records = [{**_record(i, 10.0, 300), **({"fid_ref": r} if r else {})} for i, r in enumerate(refs)]
        return write_markdown(tmp_path / "results.md", spec, records, scorer).read_text().splitlines()[2]

    assert header([a, a], a).endswith("FID-2000 against /r/a.npz (50000 images, net.pt).")
    assert header([a, a], {}).endswith("FID-2000 against /r/a.npz (50000 images, net.pt).")
    assert header([None], a).endswith("against /r/a.npz (50000 images, net.pt).")  # scored before the record
    assert header([None], {}).endswith("against a reference the score files do not record.")
    assert header([a, None], {}).endswith("against /r/a.npz (50000 images, net.pt) (1 older score did not record it).")
    mixed = header([a, b, b], {})
    assert ("against **more than one reference**: /r/a.npz (50000 images, net.pt) (1 score); /r/b.npz (? images, "
            "net.pt) (2 scores). FIDs against different references do not compare.") in mixed
    assert "this command's: /r/b.npz (? images, net.pt)" in header([a, a], b)


def test_beside_posthoc_evals_each_runs_own_ema_width_is_stated(tmp_path):
    """With post-hoc EMA evals, results.md gives each of those runs' own EMA (what the evals without a width sample)
    on the same scale, from the run's saved config: ema.sigma_rel as it is, the exponential ema.decay at the run's
    last step (classic_sigma_rel); a run whose config is not in the folder is left out, and a study without
    post-hoc evals gets no line."""
    from ditlab.train.ema import classic_sigma_rel

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nevals: {cfg: {}, pe05: {ema_sigma_rel: 0.05}}"
                                     "\nvariants: {v: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")
    records = [{**_record(seed, 7.0, 9008), "eval": e, "ema_sigma_rel": sr}
               for seed in (0, 1) for e, sr in (("cfg", 0.0), ("pe05", 0.05))]
    runs = tmp_path / "runs"
    (runs / "v-s0").mkdir(parents=True)
    (runs / "v-s0" / "config.yaml").write_text("ema: {decay: 0.999}\n")
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    line = next(line for line in text.splitlines() if "own EMA" in line)
    assert line.endswith(f"(sigma_rel): v-s0: ema.decay 0.999 at 9,008 steps is {classic_sigma_rel(0.999, 9008):.3f}.")
    (runs / "v-s1").mkdir()
    (runs / "v-s1" / "config.yaml").write_text("ema: {sigma_rel: 0.05}\n")
    line = next(line for line in write_markdown(tmp_path / "results.md", spec, records, {}).read_text().splitlines()
                if "own EMA" in line)
    assert line.endswith("is 0.091; v-s1: ema.sigma_rel 0.05.")
    plain = [r for r in records if r["eval"] == "cfg"]
    assert "own EMA" not in write_markdown(tmp_path / "results.md", spec, plain, {}).read_text()
