"""LIFT's cascade path: `ditlab sample LIFT_RUN --path cascade --lo-run RUN_LO` on tiny CPU runs: shapes and
metadata, the same samples for any batch size (the low resolution generated batch by batch, equal to two
separate generate calls), the low resolution really is the low-resolution run's samples (seed
lo_seed(K), index i, class i mod K), and errors that name the flags."""
import json

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.samples_meta import read_meta
from ditlab.tasks.lift.cascade import lo_seed

TINY = ["model.arch=DiT-S/2", "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "train.steps=2",
        "train.batch_size=4", "sample.cfg_scale=1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cascade")
    rng = np.random.default_rng(0)
    data = tmp / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 16).astype(np.int64))

    def train(name, *overrides):
        run = tmp / name
        assert main(["train", "configs/demo.yaml", f"data.path={data}", f"train.run_dir={run}", *TINY,
                     *overrides]) == 0
        return run

    return {
        "data": data,
        "lift": train("lift", "task.kind=lift", "model.num_classes=3", "lift.train_mode=clean_lo"),  # 16 + 8 px
        "lo": train("lo", "task.kind=image", "model.num_classes=3", "data.image_size=8"),
        "lo_big": train("lo_big", "task.kind=image", "model.num_classes=3"),  # 16 px: the wrong size
        "lo_uncond": train("lo_uncond", "task.kind=image", "model.num_classes=0", "data.image_size=8"),
        "tmp": tmp,
    }


def sample(run, out, *args):
    return main(["sample", str(run), "--num", "5", "--steps", "2", "--sampler", "euler", "--device", "cpu",
                 "--out", str(out), *args])


@pytest.fixture
def captured(monkeypatch):
    """Per batch: the sample indices, the conditions LiftTask.start is given and the low resolution the
    attached low-resolution run generated for them."""
    from ditlab.tasks.lift.cascade import CascadeSource

    seen = []
    lowres = CascadeSource.lowres

    def spy(self, rng, settings, cond):
        out = lowres(self, rng, settings, cond)
        seen.append((list(rng.indices), {**{k: v.clone() for k, v in cond.items()}, "lowres": out.clone()}))
        return out

    monkeypatch.setattr(CascadeSource, "lowres", spy)
    return seen


def test_cascade_samples_shape_metadata_and_batch_size(runs, captured):
    tmp = runs["tmp"]
    a, b = tmp / "a.npz", tmp / "b.npz"
    cascade = ["--path", "cascade", "--lo-run", str(runs["lo"]), "--seed", "7"]
    assert sample(runs["lift"], a, *cascade, "--batch-size", "3") == 0
    assert sample(runs["lift"], b, *cascade, "--batch-size", "7") == 0
    with np.load(a) as za, np.load(b) as zb:
        assert za["arr_0"].shape == (5, 16, 16, 3) and za["arr_0"].dtype == np.uint8
        assert za["arr_1"].tolist() == [0, 1, 2, 0, 1]  # class i mod K
        np.testing.assert_array_equal(za["arr_0"], zb["arr_0"])  # same samples whatever the batch size
        np.testing.assert_array_equal(za["arr_1"], zb["arr_1"])
    meta = read_meta(a)
    assert meta["path"] == "cascade" and meta["lo_run"] == str(runs["lo"]) and meta["task"] == "lift"
    assert meta["seed"] == 7 and meta["factor"] == 2
    # batch size 3: indices [0, 1, 2], [3, 4]; batch size 7: [0..4]; the same low resolution per index
    first = {i: (c["lowres"][r], c["labels"][r]) for idx, c in captured[:2] for r, i in enumerate(idx)}
    second = {i: (c["lowres"][r], c["labels"][r]) for idx, c in captured[2:] for r, i in enumerate(idx)}
    assert [idx for idx, _ in captured] == [[0, 1, 2], [3, 4], [0, 1, 2, 3, 4]]
    for i in range(5):
        assert first[i][0].shape == (3, 8, 8) and first[i][0].dtype == torch.uint8
        assert torch.equal(first[i][0], second[i][0]) and int(first[i][1]) == int(second[i][1]) == i % 3


def test_cascade_low_resolution_is_the_lo_runs_samples(runs, captured):
    """The low resolution held clean is what `ditlab sample RUN_LO --seed lo_seed(K)` generates for the
    same indices and classes (the documented seed mapping); the LIFT noise differs from it."""
    tmp = runs["tmp"]
    assert sample(runs["lift"], tmp / "c.npz", "--path", "cascade", "--lo-run", str(runs["lo"]), "--seed", "7") == 0
    assert sample(runs["lo"], tmp / "lo.npz", "--seed", str(lo_seed(7)), "--batch-size", "2") == 0
    with np.load(tmp / "lo.npz") as z:
        alone = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2)
        assert z["arr_1"].tolist() == [0, 1, 2, 0, 1]
    (idx, cond), = captured
    assert idx == [0, 1, 2, 3, 4] and torch.equal(cond["lowres"], alone)
    assert lo_seed(7) != 7 and lo_seed(7) == lo_seed(7) and lo_seed(7) != lo_seed(8) and 0 <= lo_seed(7) < 2**31
    # Another seed: another low resolution.
    assert sample(runs["lift"], tmp / "d.npz", "--path", "cascade", "--lo-run", str(runs["lo"]), "--seed", "8") == 0
    assert not torch.equal(captured[1][1]["lowres"], cond["lowres"])


def test_cascade_path_is_lo_oracles_rows(runs, capsys):
    assert main(["lift", "paths", str(runs["lift"]), "--steps", "3"]) == 0
    rows = {r["path"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert rows["cascade"]["times"] == rows["lo-oracle"]["times"]
    assert all(t_lo == 0 for _, t_lo in rows["cascade"]["times"])
    assert rows["cascade"]["needs"] == "--lo-run RUN_LO" and "needs" not in rows["diagonal"]


@pytest.mark.parametrize("args, message", [
    (["--path", "cascade"], "--path cascade needs --lo-run RUN_LO"),
    (["--path", "diagonal", "--lo-run", "LO"], "--lo-run applies to --path cascade only \\(this is --path diagonal\\)"),
    (["--path", "lo-oracle", "--lo-run", "LO", "--data", "DATA"], "--lo-run applies to --path cascade only"),
    (["--path", "cascade", "--lo-run", "LO", "--data", "DATA"], "--data applies to --path lo-oracle only"),
    (["--path", "cascade", "--lo-run", "LO_BIG"], "--lo-run .*lo_big generates 16x16 images; .* needs 8x8 "
                                                  "\\(train the low-resolution run with data.image_size=8\\)"),
    (["--path", "cascade", "--lo-run", "LO_UNCOND"], "--lo-run .*lo_uncond has no classes"),
    (["--path", "cascade", "--lo-run", "LIFT"], "--lo-run needs a task.kind=image run"),
    (["--path", "cascade", "--lo-run", "MISSING"], "--lo-run .*missing.*not a ditlab run directory"),
])
def test_errors_name_the_flags(runs, capsys, args, message):
    names = {"LO": runs["lo"], "LO_BIG": runs["lo_big"], "LO_UNCOND": runs["lo_uncond"], "LIFT": runs["lift"],
             "DATA": runs["data"], "MISSING": runs["tmp"] / "missing"}
    args = [str(names.get(a, a)) for a in args]
    assert sample(runs["lift"], runs["tmp"] / "e.npz", *args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not (runs["tmp"] / "e.npz").exists()


def test_lo_checkpoint_picks_the_lo_runs_checkpoint_and_is_recorded(runs, capsys):
    """--lo-checkpoint takes --checkpoint's values for the --lo-run run; without --lo-run it is an error."""
    lo_steps = sorted(p.name for p in (runs["lo"] / "checkpoints").glob("step_*"))
    out = runs["tmp"] / "lo_ckpt.npz"
    assert sample(runs["lift"], out, "--path", "cascade", "--lo-run", str(runs["lo"]),
                  "--lo-checkpoint", lo_steps[0]) == 0
    assert read_meta(out)["lo_checkpoint"] == str(runs["lo"] / "checkpoints" / lo_steps[0])
    assert sample(runs["lift"], runs["tmp"] / "g.npz", "--path", "cascade", "--lo-run", str(runs["lo"]),
                  "--lo-checkpoint", "step_99999999") == 1
    assert "--lo-checkpoint step_99999999" in capsys.readouterr().err
    assert sample(runs["lift"], runs["tmp"] / "g.npz", "--lo-checkpoint", "latest") == 1
    assert "--lo-checkpoint picks the checkpoint of --lo-run" in capsys.readouterr().err
    assert sample(runs["lo"], runs["tmp"] / "g.npz", "--lo-checkpoint", "latest") == 1
    assert "--lo-checkpoint does not apply to this task.kind=image run" in capsys.readouterr().err


def test_lo_run_on_other_kinds_is_refused_by_name(runs, capsys):
    assert sample(runs["lo"], runs["tmp"] / "f.npz", "--lo-run", str(runs["lo"])) == 1
    assert "--lo-run does not apply to this task.kind=image run" in capsys.readouterr().err


def test_sample_inputs_are_inputs_only():
    """How ditlab sample draws (seed, settings, batch size, precision) is no input: the cascade's low
    resolution is generated inside the generation loop, per batch."""
    from dataclasses import fields

    from ditlab.tasks.base import INPUTS, SampleInputs

    assert tuple(f.name for f in fields(SampleInputs)) == INPUTS


def two_calls(lift, lo, num, seed, settings, batch_size, start=0, autocast_dtype=None):
    """The cascade as two separate generate calls: the low resolution of the low-resolution run (seed
    lo_seed(seed), labels i mod K), then the LIFT run with it given."""
    from dataclasses import replace

    from ditlab.generation import generate

    labels = {"labels": torch.arange(start, start + num) % lift.task.num_classes} if lift.task.num_classes else {}
    low = generate(lo.task, lo.model, num, lo_seed(seed), replace(settings, path=None), labels,
                   batch_size=batch_size, start=start, autocast_dtype=autocast_dtype)["images"]
    return generate(lift.task, lift.model, num, seed, settings, {"lowres": low, **labels}, batch_size=batch_size,
                    start=start, autocast_dtype=autocast_dtype)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_cascade_per_batch_is_two_generate_calls_for_any_batch_size(runs, autocast_dtype):
    """The attached low-resolution run generates each batch's low resolution: the samples equal two
    separate generate calls (low, then high), bit for bit, for any batch size and start offset, and in
    the batch's precision (bf16 autocast works on the CPU too)."""
    from ditlab.generation import generate
    from ditlab.runs import load_run
    from ditlab.tasks.base import SampleSettings
    from ditlab.tasks.lift.cascade import CascadeSource

    lift, lo = load_run(runs["lift"]), load_run(runs["lo"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights far from the (near-identity) initialisation, so that precision shows
        for p in [*lift.model.parameters(), *lo.model.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    settings = SampleSettings(sampler="ddim", eta=0.5, steps=2, path="cascade")  # stochastic steps: the rng too
    reference = two_calls(lift, lo, 5, 3, settings, batch_size=5, autocast_dtype=autocast_dtype)
    lift.task.use_cascade(CascadeSource.of(lift, lo))
    for batch_size in (1, 2, 5):
        out = generate(lift.task, lift.model, 5, 3, settings, batch_size=batch_size, autocast_dtype=autocast_dtype)
        assert torch.equal(out["images"], reference["images"]) and torch.equal(out["labels"], reference["labels"])
    tail = generate(lift.task, lift.model, 2, 3, settings, batch_size=1, start=3, autocast_dtype=autocast_dtype)
    assert torch.equal(tail["images"], reference["images"][3:]) and tail["labels"].tolist() == [0, 1]
    if autocast_dtype is not None:  # the precision really reaches the low-resolution run
        plain = two_calls(lift, lo, 5, 3, settings, batch_size=5)
        lift.task.use_cascade(None)
        assert not torch.equal(plain["images"], reference["images"])


def test_cascade_in_the_api_errors(runs):
    from ditlab.generation import generate
    from ditlab.runs import load_run
    from ditlab.tasks.base import SampleSettings
    from ditlab.tasks.lift.cascade import CascadeSource

    lift, lo = load_run(runs["lift"]), load_run(runs["lo"])
    settings = SampleSettings(sampler="euler", steps=2, path="cascade")
    with pytest.raises(ValueError, match="--lo-run: the low resolution given is \\(3, 16, 16\\)"):
        generate(lift.task, lift.model, 1, 0, settings, {"lowres": torch.zeros(1, 3, 16, 16, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="--path cascade needs --lo-run RUN_LO"):
        generate(lift.task, lift.model, 1, 0, settings)
    lift.task.use_cascade(CascadeSource.of(lift, lo))
    with pytest.raises(ValueError, match="--lo-run applies to --path cascade only \\(this is --path diagonal\\)"):
        generate(lift.task, lift.model, 1, 0, SampleSettings(sampler="euler", steps=2, path="diagonal"))
    # A given low resolution wins over the attached run (the run is not asked).
    given = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    source = CascadeSource.of(lift, lo)
    source.lowres = None  # asking it would fail
    lift.task.use_cascade(source)
    out = generate(lift.task, lift.model, 2, 0, settings, {"lowres": given})
    assert out["images"].shape == (2, 3, 16, 16)


def test_fast_kernels_flag_reaches_the_lo_run_network_too(runs, monkeypatch, capsys):
    """--fast-kernels applies to both networks of a cascade: `on` on a CPU is refused (naming the flag) for the
    LIFT run's network, and `off` is set on the attached low-resolution network as well."""
    import ditlab.models.kernels as kernels

    tmp = runs["tmp"]
    cascade = ["--path", "cascade", "--lo-run", str(runs["lo"])]
    assert sample(runs["lift"], tmp / "fk_on.npz", *cascade, "--fast-kernels", "on") == 1
    assert "--fast-kernels on needs a CUDA device" in capsys.readouterr().err
    configured = []
    real = kernels.configure_fast_kernels
    monkeypatch.setattr(kernels, "configure_fast_kernels",
                        lambda model, mode, device, name="train.fast_kernels":
                        configured.append((type(model).__name__, mode, name)) or real(model, mode, device, name))
    assert sample(runs["lift"], tmp / "fk_off.npz", *cascade, "--fast-kernels", "off") == 0
    assert [c for c in configured if c[2] == "--fast-kernels"] == [("DiT", "off", "--fast-kernels")] * 2
    assert read_meta(tmp / "fk_off.npz")["fast_kernels"] is False
