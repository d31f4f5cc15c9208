"""Super-resolution task: condition stream wiring, dropout to the learned null, noise augmentation."""
import numpy as np
import pytest
import torch

from ditlab.config import ModelConfig, TaskConfig, load_config
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.schedules import FlowSchedule
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.superres.model import COND, TARGET, build_superres_model, downsample
from ditlab.tasks.superres.task import SuperResTask
from ditlab.train.trainer import Trainer


def make(task_cfg, seed=0):
    torch.manual_seed(seed)
    model = build_superres_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=2, num_heads=2), 8, 3,
                                 task_cfg.factor)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return SuperResTask(model, Objective(FlowSchedule(), "velocity"), task_cfg), model


def test_streams_follow_the_note():
    _, model = make(TaskConfig(kind="superres", factor=2))
    assert [s.name for s in model.streams] == [COND, TARGET]  # condition tokens first
    assert [s.num_tokens for s in model.streams] == [4, 16]
    assert not model.streams[0].predict and model.streams[0].pos_scale == 2.0
    with pytest.raises(ValueError, match="task.factor=3"):
        build_superres_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=1, num_heads=2), 8, 3, 3)


def test_condition_matters_and_dropout_removes_it():
    task, model = make(TaskConfig(kind="superres", factor=2))
    x = torch.randn(2, 3, 8, 8)
    t = torch.full((2,), 0.5)
    low_a, low_b = downsample(x, 2), torch.randn(2, 3, 4, 4)
    den = task.denoiser(model, {})

    def run(low, drop):
        return den({TARGET: x, COND: low}, {TARGET: t, COND: torch.zeros(2)}, torch.tensor([drop, drop]))[TARGET][0]

    assert not torch.allclose(run(low_a, False), run(low_b, False))  # the condition is used
    torch.testing.assert_close(run(low_a, True), run(low_b, True))  # dropped: replaced by the null


def test_loss_only_on_the_target_and_augmentation_level():
    task, _ = make(TaskConfig(kind="superres", factor=2, cond_noise_max=0.3, cond_dropout=0.5))
    seen = {}
    real = task.objective.loss

    def spy(net, x0, t, noise, patch_sizes, loss_mask=None):
        seen.update(t=t, x0=x0)
        return real(net, x0, t, noise, patch_sizes, loss_mask)

    task.objective.loss = spy
    torch.manual_seed(0)
    loss = task.loss_on_batch(torch.randn(64, 3, 8, 8).clamp(-1, 1), None)
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    s = seen["t"][COND]
    assert 0 <= s.min() and s.max() <= 0.3 and s.std() > 0.05  # condition noise level s ~ U(0, s_max)
    torch.testing.assert_close(seen["x0"][COND], downsample(seen["x0"][TARGET], 2))


def test_trains_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8))
    cfg = load_config(None, ["task.kind=superres", "task.cond_dropout=0.2", "task.cond_noise_max=0.2",
                             "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                             f"data.path={data}", "train.batch_size=8", "train.steps=3", "train.device=cpu",
                             "train.log_every=1", "train.sample_every=2", "sample.steps=2", f"train.run_dir={tmp_path / 'r'}",
                             "diffusion.process=flow", "diffusion.prediction=velocity"])
    trainer = Trainer(cfg, progress=False)
    assert trainer.run() == 0
    assert (tmp_path / "r" / "model.json").read_text().count('"image_size": 16') == 1
    from PIL import Image

    grid = Image.open(tmp_path / "r" / "samples" / "step_00000002.png")
    assert grid.size[0] == 12 * 16 + 13 * 2  # 4 (low-res, sample, original) triplets per row


def test_sampling_is_conditioned_and_seeded_per_index():
    from ditlab.generation import generate

    task, model = make(TaskConfig(kind="superres", factor=2, cond_noise_sample=0.1))
    model.eval()
    hr = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    settings = SampleSettings(sampler="heun", steps=3, cfg_scale=2.0)
    a = generate(task, model, 5, 1, settings, {"images": hr}, batch_size=5)["images"]
    b = generate(task, model, 5, 1, settings, {"images": hr}, batch_size=2)["images"]
    assert a.shape == (5, 3, 8, 8) and (a.int() - b.int()).abs().max() <= 1
    c = generate(task, model, 5, 1, settings, {"images": hr.flip(0)}, batch_size=5)["images"]
    assert (a.int() - c.int()).abs().float().mean() > 0.2  # other conditions, other images (a weak random net)
    with pytest.raises(ValueError, match="condition images"):
        generate(task, model, 2, 1, settings)


def test_cli_samples_a_superres_run(tmp_path, capsys):
    from ditlab.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    run = tmp_path / "r"
    assert main(["train", "configs/demo.yaml", "task.kind=superres", "model.num_classes=0", f"data.path={data}",
                 f"train.run_dir={run}", "train.steps=2", "train.batch_size=8", "model.hidden_size=32",
                 "model.depth=1", "model.num_heads=2", "--no-progress"]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num", "4", "--steps", "2", "--sampler", "euler", "--cfg", "1.5",
                 "--out", str(out), "--data", str(data)]) == 0
    assert np.load(out)["arr_0"].shape == (4, 16, 16, 3)
    assert main(["sample", str(run), "--num", "4", "--out", str(out)]) == 1
    assert "--data" in capsys.readouterr().err
    # the old flag still works, with a warning
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(out), "--cond", str(data)]) == 0
    assert "--cond is deprecated; use --data" in capsys.readouterr().err


def test_diagnose_collapse_cli(tmp_path, capsys):
    import json

    from ditlab.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    run = tmp_path / "r"
    assert main(["train", "configs/demo.yaml", "task.kind=superres", "task.cond_dropout=0.2", "model.num_classes=0",
                 f"data.path={data}", f"train.run_dir={run}", "train.steps=2", "train.batch_size=8",
                 "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diagnose", "collapse", str(run), "--data", str(data), "--conditions", "3", "--num-seeds", "4",
                 "--cfg", "1.0", "2.0", "--cond-noise", "0.0", "0.3", "--steps", "2", "--sampler", "euler",
                 "--device", "cpu", "--out", str(tmp_path / "diag")]) == 0
    verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(verdict) == {"collapsed", "at", "seed_to_residual"}
    report = json.loads((tmp_path / "diag" / "collapse.json").read_text())
    assert len(report["settings"]) == 4 and report["residual_energy"] > 0 and report["precision"] == "fp32"
    assert (tmp_path / "diag" / "collapse.png").exists()
    assert (tmp_path / "diag" / "collapse_cfg2.0_noise0.3.png").exists()
    assert {r["cond_scale"] for r in report["settings"]} == {1.0}
    assert main(["diagnose", "collapse", str(run), "--data", str(data), "--conditions", "2", "--num-seeds", "2",
                 "--cfg", "1.0", "--cond-scale", "1.0", "0.5", "--steps", "2", "--sampler", "euler",
                 "--device", "cpu", "--out", str(tmp_path / "diag2")]) == 0
    report = json.loads((tmp_path / "diag2" / "collapse.json").read_text())
    assert [r["cond_scale"] for r in report["settings"]] == [1.0, 0.5]
    assert (tmp_path / "diag2" / "collapse_cfg1.0_noise0.0_cs0.5.png").exists()
    # --checkpoint / --weights are cliargs' (as in `ditlab sample`): --weights beside a .safetensors file is an error
    file = next((run / "checkpoints").glob("step_*/model.safetensors"))
    capsys.readouterr()
    assert main(["diagnose", "collapse", str(run), "--data", str(data), "--checkpoint", str(file), "--weights", "ema",
                 "--device", "cpu", "--out", str(tmp_path / "diag3")]) == 1
    assert "--weights ema picks the weights of a checkpoint folder" in capsys.readouterr().err
    assert main(["diagnose", "collapse", str(run), "--data", str(data), "--conditions", "2", "--num-seeds", "2",
                 "--cfg", "1.0", "--steps", "1", "--sampler", "euler", "--weights", "model", "--device", "cpu",
                 "--out", str(tmp_path / "diag3")]) == 0


def test_diagnose_collapse_checkpoint_and_weights_are_the_shared_flags(monkeypatch, capsys):
    """`diagnose collapse` takes cliargs' --checkpoint and --weights (same help as `ditlab sample`) and passes
    --weights on to load_run as `which`."""
    from ditlab import runs
    from ditlab.cli import build_parser, main

    def options(*path):
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
        return {a.option_strings[0]: (a.default, a.help, a.choices) for a in parser._actions if a.option_strings}

    collapse, sample, bench = options("diagnose", "collapse"), options("sample"), options("bench", "sample")
    for flag in ("--checkpoint", "--weights", "--fp32", "--device"):  # one vocabulary: the same flag, the same help
        assert collapse[flag] == sample[flag] == bench[flag], flag

    seen = {}

    def spy(run_dir, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(runs, "load_run", spy)
    assert main(["diagnose", "collapse", "RUN", "--data", "d.npz", "--checkpoint", "step_00000002",
                 "--weights", "model", "--device", "cpu"]) == 1
    assert "stop here" in capsys.readouterr().err
    assert seen["checkpoint"] == "step_00000002" and seen["which"] == "model"
    assert main(["diagnose", "collapse", "RUN", "--data", "d.npz", "--device", "cpu"]) == 1
    assert seen["checkpoint"] is None and seen["which"] is None  # the EMA of the latest checkpoint


def test_two_stage_init_from_an_unconditional_run(tmp_path, capsys):
    from ditlab.train.checkpoint import load_weights

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    common = ["model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
              f"data.path={data}", "train.batch_size=8", "train.steps=2", "train.device=cpu", "train.sample_every=0",
              "diffusion.process=flow", "diffusion.prediction=velocity"]
    stage1 = tmp_path / "uncond"
    assert Trainer(load_config(None, common + [f"train.run_dir={stage1}"]), progress=False).run() == 0
    cfg = load_config(None, common + ["task.kind=superres", "task.cond_dropout=0.1", f"train.init_from={stage1}",
                                      "optim.lr=2e-5", f"train.run_dir={tmp_path / 'sr'}"])
    trainer = Trainer(cfg, progress=False)
    assert "patch_embed.lowres.proj.weight" in trainer.init_report["missing"]
    assert "null_tokens.lowres" in trainer.init_report["missing"]
    assert trainer.init_report["unexpected"] == []
    assert "zero-initialised" in capsys.readouterr().out
    old = load_weights(stage1, "ema")
    new = trainer.model.state_dict()
    assert torch.equal(new["blocks.0.attn.qkv.weight"], old["blocks.0.attn.qkv.weight"])
    assert torch.count_nonzero(new["patch_embed.lowres.proj.weight"]) == 0
    assert trainer.run() == 0


def test_init_from_with_other_shapes_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    common = ["model.arch=DiT-S/4", "model.depth=1", "model.num_heads=2", f"data.path={data}", "train.batch_size=8",
              "train.steps=1", "train.device=cpu", "train.sample_every=0"]
    assert Trainer(load_config(None, common + ["model.hidden_size=32", f"train.run_dir={tmp_path / 'a'}"]),
                   progress=False).run() == 0
    with pytest.raises(ValueError, match="shapes differ"):
        Trainer(load_config(None, common + ["model.hidden_size=64", f"train.init_from={tmp_path / 'a'}",
                                            f"train.run_dir={tmp_path / 'b'}"]), progress=False)


def test_dummy_condition_pretraining_masks_or_fills_the_condition():
    cfg = TaskConfig(kind="superres", factor=2, cond_mode="dummy", dummy_prob=0.5, dummy_kind="noise")
    task, model = make(cfg)
    seen = {}
    real_forward = model.forward

    def spy(x, t, **kw):
        seen.update(x=x, kw=kw)
        return real_forward(x, t, **kw)

    model.forward = spy
    torch.manual_seed(0)
    loss = task.loss_on_batch(torch.rand(64, 3, 8, 8) * 2 - 1, None)
    assert torch.isfinite(loss).all()
    mask = seen["kw"]["token_mask"][COND]  # (B, 4): whole condition visible or whole condition masked
    assert mask.shape == (64, 4) and (mask.all(1) | ~mask.any(1)).all()
    assert 10 < mask[:, 0].sum() < 54  # about dummy_prob of the batch carries dummy tokens
    low = seen["x"][COND]
    assert torch.count_nonzero(low[~mask[:, 0]]) == 0  # masked samples: zeros (never seen anyway)
    assert low[mask[:, 0]].std() > 0.5  # dummy samples: noise, not the image's low-res copy

    # a dummy-pretrained model samples unconditionally: no condition images needed
    from ditlab.generation import generate

    model.forward = real_forward
    images = generate(task, model.eval(), 3, 0, SampleSettings(sampler="euler", steps=2))["images"]
    assert images.shape == (3, 3, 8, 8)


def test_dummy_pretraining_then_conditional_finetuning_loads_every_weight(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    common = ["task.kind=superres", "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
              f"data.path={data}", "train.batch_size=8", "train.steps=2", "train.device=cpu", "train.sample_every=0"]
    stage1 = tmp_path / "pre"
    assert Trainer(load_config(None, common + ["task.cond_mode=dummy", f"train.run_dir={stage1}"]),
                   progress=False).run() == 0
    stage2 = Trainer(load_config(None, common + [f"train.init_from={stage1}", "optim.lr=1e-5",
                                                 f"train.run_dir={tmp_path / 'ft'}"]), progress=False)
    assert stage2.init_report == {"missing": [], "unexpected": [], "widened": [], "fresh": []}  # same layout
    assert stage2.run() == 0


def test_sr64_preset_has_the_notes_token_layout():
    """configs/cifar10_sr64.yaml: a 32x32 condition as 64 tokens before a 64x64 target's 256 (note 000)."""
    from pathlib import Path

    from ditlab.config import load_config
    from ditlab.tasks.registry import build_model

    cfg = load_config(str(Path(__file__).parents[3] / "configs" / "cifar10_sr64.yaml"))
    model = build_model(cfg, {"image_size": cfg.data.image_size, "channels": 3})
    assert [(s.name, s.num_tokens, s.predict) for s in model.streams] == [("lowres", 64, False), ("image", 256, True)]


def test_no_progress_reaches_the_condition_images(tmp_path, capsys):
    """--no-progress of sample / psnr / diagnose collapse also silences the reading of --data's images (the
    superres study's logs were full of "reading ..." bars); without it the bar is there."""
    from PIL import Image

    from ditlab.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i, im in enumerate(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)):
        Image.fromarray(im).save(folder / f"{i}.png")
    data = str(tmp_path / "data")
    run = tmp_path / "r"
    assert main(["train", "configs/demo.yaml", "task.kind=superres", "task.cond_dropout=0.2", "model.num_classes=0",
                 f"data.path={data}", f"train.run_dir={run}", "train.steps=1", "train.batch_size=4",
                 "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num", "4", "--steps", "1", "--sampler", "euler", "--out", str(out),
                 "--data", data, "--no-progress"]) == 0
    assert "reading" not in capsys.readouterr().err
    assert main(["psnr", str(out), "--data", data, "--no-progress"]) == 0
    assert "reading" not in capsys.readouterr().err
    assert main(["diagnose", "collapse", str(run), "--data", data, "--conditions", "2", "--num-seeds", "2",
                 "--cfg", "1.0", "--steps", "1", "--sampler", "euler", "--device", "cpu",
                 "--out", str(tmp_path / "diag"), "--no-progress"]) == 0
    assert "reading" not in capsys.readouterr().err
    assert main(["psnr", str(out), "--data", data]) == 0
    assert "reading" in capsys.readouterr().err
