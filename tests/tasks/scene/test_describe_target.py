"""scene.describe_target: a second context set describing the target (issue 16 item 1, end to end)."""
import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.tasks.scene.data import make_scene_set

from tests.tasks.scene.test_training import TINY


def test_descriptions_are_kind_and_sizes_and_take_no_random_numbers():
    cfg = load_config("configs/scene_small.yaml", TINY)
    a = make_scene_set(cfg.scene, 5, 0, 12)
    b = make_scene_set(cfg.scene, 5, 0, 12)
    torch.testing.assert_close(a.features, b.features)
    desc, mask = a.describe()
    assert desc.shape == (5, 4, 2) and mask.shape == (5, 4)
    for i, prim in enumerate(a.targets):
        n = len(prim.params)
        assert int(mask[i].sum()) == n + 1
        torch.testing.assert_close(desc[i, 1:n + 1, 1], prim.params.float())


def _describe_cfg(run, steps=3, extra=()):
    return ["configs/scene_small.yaml", *TINY, "scene.describe_target=true", "task.cond_dropout=0.3",
            "model.contexts=[{name: target, cfg_dropout: 0.4, blocks: '1:2'}]", f"train.run_dir={run}",
            f"train.steps={steps}", *extra]


def test_scene_model_with_both_sets_trains_and_samples_through_ditlab_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_describe_cfg(run), "--no-progress"]) == 0
    from ditlab.runs import load_run

    loaded = load_run(run)
    dit = loaded.model.dit
    assert [("target" in b.cross_sets) for b in dit.blocks] == [False, True]
    assert loaded.task.context_sets == ("scene", "target")
    outs = {}
    for name, flags in {"plain": [], "cfg": ["--cfg", "2"],
                        "composed": ["--cfg-context", "scene=2", "--cfg-context", "target=3"]}.items():
        out = tmp_path / f"{name}.npz"
        assert main(["sample", str(run), "--num", "3", "--steps", "2", "--batch-size", "2", "--out", str(out),
                     *flags]) == 0
        with np.load(out) as z:
            outs[name] = z["points"]
        assert outs[name].shape == (3, 6, 3) and np.isfinite(outs[name]).all()
    # (a 3-step model barely uses its conditions yet: the guided samples' values are checked on the
    # task's denoiser below and against the formula in tests/models/test_context_sets_multi.py)
    from ditlab.generation import check_settings
    from ditlab.tasks.base import SampleSettings

    with pytest.raises(ValueError, match="context sets are"):
        check_settings(SampleSettings(cfg_context=(("text", 2.0),)), loaded.task)

    # `ditlab scene eval` takes the same --cfg-context, and records it
    import json

    out = tmp_path / "eval"
    assert main(["scene", "eval", str(run), "--scenes", "2", "--steps", "2", "--figure-scenes", "0",
                 "--cfg-context", "scene=2", "--cfg-context", "target=3", "--out", str(out), "--no-progress"]) == 0
    assert "unconditional" not in capsys.readouterr().err  # no progress bars
    report = json.loads((out / "eval.json").read_text())
    assert report["cfg_context"] == {"scene": 2.0, "target": 3.0}
    capsys.readouterr()
    assert main(["scene", "eval", str(run), "--scenes", "2", "--steps", "2", "--cfg-context", "text=2"]) == 1
    assert "context sets are" in capsys.readouterr().err


def _perturbed_model():
    """The config, data and an eval-mode model of _describe_cfg with every weight nudged off its (often zero)
    initialisation, so that each set's contribution shows in the output."""
    from ditlab.tasks.scene.data import load_scene_train_data
    from ditlab.tasks.scene.model import build_scene_model

    cfg = load_config(*_describe_cfg("unused")[:1], overrides=_describe_cfg("unused")[1:])
    data = load_scene_train_data(cfg)
    torch.manual_seed(0)
    model = build_scene_model(cfg, data.info).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, data, model


def test_describe_padding_and_drop_are_per_set():
    _, data, model = _perturbed_model()
    batch = data.batch(torch.arange(4))
    x = {"points": batch["target_points"]}
    t = {"points": torch.full((4,), 0.5)}
    ref = model(x, t, batch["features"], batch["mask"], describe=batch["describe"],
                describe_mask=batch["describe_mask"])["points"]
    # padding of the description is never read
    d = batch["describe"].clone()
    d[~batch["describe_mask"]] = float("nan")
    out = model(x, t, batch["features"], batch["mask"], describe=d, describe_mask=batch["describe_mask"])["points"]
    torch.testing.assert_close(out, ref)
    # the description matters, and a fully masked description equals a dropped-out contribution of zero
    empty = torch.zeros_like(batch["describe_mask"])
    out2 = model(x, t, batch["features"], batch["mask"], describe=batch["describe"], describe_mask=empty)["points"]
    assert torch.isfinite(out2).all() and not torch.allclose(out2, ref)


def test_task_denoiser_drops_each_set_to_its_own_null():
    from ditlab.diffusion.objectives import build_objective
    from ditlab.tasks.scene.task import SceneTask

    cfg, data, model = _perturbed_model()
    task = SceneTask(model, build_objective(cfg.diffusion))
    cond = data.scenes.conditions(3)
    den = task.denoiser(model, cond)
    x = {"points": torch.randn(3, 6, 3)}
    t = {"points": torch.full((3,), 0.5)}
    F = torch.zeros(3, dtype=torch.bool)
    T = torch.ones(3, dtype=torch.bool)
    keep = den(x, t, F)["points"][1]
    no_desc = den(x, t, {"all": F, "target": T})["points"][1]
    no_scene = den(x, t, {"all": F, "scene": T})["points"][1]
    none = den(x, t, T)["points"][1]
    torch.testing.assert_close(den(x, t, {"all": T})["points"][1], none)
    torch.testing.assert_close(den(x, t, {"all": F, "scene": T, "target": T})["points"][1], none)
    for a, b in ((keep, no_desc), (keep, no_scene), (no_desc, no_scene), (none, no_desc)):
        assert not torch.allclose(a, b)
    # the description dropped = the model given only the null as description
    desc = cond["describe"]
    ctx = task._scene_in_frame(cond["features"], *task._model_frame(cond["features"], cond["mask"]))
    direct = model(x, t, ctx, cond["mask"], context_drop={"": F, "target": T}, describe=desc,
                   describe_mask=cond["describe_mask"])["points"]
    torch.testing.assert_close(task.objective.denoised({"points": direct}, x, t, task.patch_sizes)["points"][1],
                               no_desc)
