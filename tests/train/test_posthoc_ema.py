"""Post-hoc EMA (EDM2 section 3): power-function EMAs, their snapshots, the least-squares reconstruction,
resume, and `ditlab ema` end to end on a tiny CPU run."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ditlab.cli import main
from ditlab.config import load_config, read_saved_config
from ditlab.configlib import ConfigError
from ditlab.train.checkpoint import CheckpointError, find_latest_checkpoint, load_checkpoint, load_weights
from ditlab.train.ema import PowerEMA, classic_sigma_rel, gamma_from_sigma_rel, sigma_rel_from_gamma
from ditlab.train.posthoc_ema import (PosthocEMA, find_snapshots, profile_dot, reconstruct, snapshot_name,
                                      solve_posthoc)
from ditlab.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


# ---- gamma(sigma_rel) and the profile ----------------------------------------------------------
@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.07, 0.1, 0.2, 0.28, 12 ** -0.5])
def test_gamma_round_trip(sigma_rel):
    gamma = gamma_from_sigma_rel(sigma_rel)
    assert gamma >= 0
    assert sigma_rel_from_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-10)


def test_gamma_values_and_range():
    # EDM2 quotes gamma = 16.97 for sigma_rel 0.05 and 6.94 for 0.10.
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    assert gamma_from_sigma_rel(12 ** -0.5) == pytest.approx(0.0, abs=1e-6)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            gamma_from_sigma_rel(bad)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.25])
def test_sigma_rel_is_the_relative_std_of_the_profile(sigma_rel):
    """The formula checked against its definition: the std of p(tau) = (g+1) tau^g on [0, 1], numerically."""
    g = gamma_from_sigma_rel(sigma_rel)
    tau = np.linspace(0, 1, 2_000_001)
    p = (g + 1) * tau ** g
    mass = np.trapezoid(p, tau)
    mean = np.trapezoid(tau * p, tau)
    std = np.sqrt(np.trapezoid((tau - mean) ** 2 * p, tau))
    assert mass == pytest.approx(1.0, rel=1e-6)
    assert std == pytest.approx(sigma_rel, rel=1e-5)


@pytest.mark.parametrize("t_a,g_a,t_b,g_b", [(1.0, 6.94, 1.0, 16.97), (0.3, 6.94, 1.0, 16.97), (1.0, 2.0, 0.45, 11.2),
                                             (0.7, 0.0, 0.7, 0.5), (250.0, 6.94, 1000.0, 3.0)])
def test_profile_inner_product_closed_form_matches_integration(t_a, g_a, t_b, g_b):
    m = min(t_a, t_b)
    tau = np.linspace(0, m, 4_000_001)
    numeric = np.trapezoid((g_a + 1) * tau ** g_a / t_a ** (g_a + 1) * (g_b + 1) * tau ** g_b / t_b ** (g_b + 1), tau)
    assert float(profile_dot(t_a, g_a, t_b, g_b)) == pytest.approx(numeric, rel=1e-6)
    assert float(profile_dot(t_a, g_a, t_b, g_b)) == pytest.approx(float(profile_dot(t_b, g_b, t_a, g_a)), rel=1e-14)


def test_fit_error_matches_integration():
    ts, gs = [200, 400, 600, 800, 1000] * 2, [6.94] * 5 + [16.97] * 5
    g = gamma_from_sigma_rel(0.07)
    x, err = solve_posthoc(ts, gs, 1000, g)
    tau = np.linspace(0, 1000, 2_000_001)

    def p(t, gamma):
        return np.where(tau <= t, (gamma + 1) * tau ** gamma / t ** (gamma + 1), 0.0)
    fit, target = sum(c * p(t, gamma) for c, t, gamma in zip(x, ts, gs)), p(1000, g)
    numeric = np.sqrt(np.trapezoid((fit - target) ** 2, tau) / np.trapezoid(target ** 2, tau))
    assert 1e-4 < err < 0.05
    assert err == pytest.approx(numeric, rel=1e-3)


@pytest.mark.parametrize("sigma_rel", [0.12, 0.15, 0.2, 0.25])
def test_coefficients_sum_to_one_where_the_snapshots_are_sparse(sigma_rel):
    """Snapshots every 1,000 of 8,347 steps (the speedrun study's posthoc_ema run): the free least-squares fit
    of sigma_rel 0.2 has mass 0.983, which would scale every reconstructed weight by it (FID-10k 24.3 on that
    run, against 7.7 at the tracked 0.10). Under the constraint the mass is 1 and the fit costs little: within 10%
    of the free fit's error, and below 8% for 0.2."""
    steps = [1000 * i for i in range(1, 9)] + [8347]
    ts, gs = [t for t in steps for _ in (0, 1)], [gamma_from_sigma_rel(s) for _ in steps for s in (0.05, 0.1)]
    g = gamma_from_sigma_rel(sigma_rel)
    x, err = solve_posthoc(ts, gs, 8347, g)
    assert x.sum() == pytest.approx(1.0, abs=1e-9)
    r = np.asarray(ts, dtype=np.float64) / 8347
    A = profile_dot(r[:, None], np.asarray(gs)[:, None], r[None, :], np.asarray(gs)[None, :])
    b = profile_dot(r, gs, 1.0, g)
    free = np.linalg.lstsq(A, b, rcond=None)[0]
    target = float(profile_dot(1.0, g, 1.0, g))
    free_err = np.sqrt(max(target - 2 * free @ b + free @ A @ free, 0.0) / target)
    assert free_err <= err < 1.1 * free_err
    if sigma_rel == 0.2:
        assert free.sum() == pytest.approx(0.983, abs=0.001) and err < 0.08


def test_a_constant_trajectory_reconstructs_to_itself(tmp_path):
    """Whatever the snapshots' spacing, a parameter that never moved has every EMA equal to it; a reconstruction
    whose coefficients do not sum to 1 would return it scaled."""
    model = Toy(8)
    with torch.no_grad():
        model.w.fill_(3.0)
    tracked = PosthocEMA(model, (0.05, 0.10))
    for t in range(1, 101):
        tracked.update(model, t)
        if t % 25 == 0:
            tracked.write_snapshots(tmp_path, t)
    for r in reconstruct(tmp_path, [0.15, 0.2, 0.25], write=False):
        assert r.fit_error > 0.02  # a width the four snapshot times shape poorly
        torch.testing.assert_close(r.weights["w"], torch.full((8,), 3.0), rtol=1e-6, atol=0)


# ---- the power EMA during training -------------------------------------------------------------
class Toy(nn.Module):
    """One "training" parameter vector and a persistent buffer (copied by the EMA, not averaged)."""

    def __init__(self, n: int = 64):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def trajectory(step: int, n: int = 64) -> torch.Tensor:
    """The known parameter path: a drift, a slow oscillation and a fixed random walk."""
    g = torch.Generator().manual_seed(step)
    return torch.sin(torch.arange(n) + step / 150.0) + 0.002 * step + 0.05 * torch.randn(n, generator=g)


@pytest.mark.parametrize("every", [1, 3])
def test_power_ema_equals_its_closed_form(every):
    """Unrolled, update k (at step t_k) weighs its model by (t_k/t)^(g+1) - (t_{k-1}/t)^(g+1)."""
    model = Toy(8)
    ema = PowerEMA(model, 0.1)
    g = ema.gamma
    assert every > 1 or ema.decay_at(1) == 0.0
    updates = list(range(every, 300 + 1, every))
    for t in updates:
        if every == 1 and t > 1:
            assert ema.decay_at(t) == pytest.approx((1 - 1 / t) ** (g + 1), rel=1e-12)  # EDM2's beta_t
        with torch.no_grad():
            model.w.copy_(trajectory(t, 8))
        ema.update(model, t)
        if t == updates[0]:
            assert torch.equal(ema.module.w, model.w)  # the first update copies
    t = updates[-1]
    prev = [0] + updates[:-1]
    expected = sum(((tk / t) ** (g + 1) - (tp / t) ** (g + 1)) * trajectory(tk, 8).double() for tk, tp in zip(updates, prev))
    assert ema.module.w.dtype == torch.float32 and ema.last_step == t
    torch.testing.assert_close(ema.module.w.double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steps must grow"):
        ema.update(model, t)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """1,000 toy steps: power EMAs of 0.05 and 0.10 with snapshots every 50 steps, and a directly tracked
    0.07 to compare the reconstruction with."""
    run = tmp_path_factory.mktemp("toy") / "run"
    model = Toy()
    tracked = PosthocEMA(model, (0.05, 0.10))
    direct = PowerEMA(model, 0.07)
    for t in range(1, 1001):
        with torch.no_grad():
            model.w.copy_(trajectory(t))
            model.count.fill_(t)
        tracked.update(model, t)
        direct.update(model, t)
        if t % 50 == 0:
            tracked.write_snapshots(run, t)
    return run, tracked, direct


def test_reconstruction_matches_the_directly_tracked_ema(toy_run):
    run, tracked, direct = toy_run
    (r,) = reconstruct(run, [0.07], write=False)
    assert r.step == 1000 and len(r.snapshots) == 40
    got, want = r.weights["w"].double(), direct.module.w.double()
    ema05, ema10 = (e.module.w.double() for e in tracked.emas)
    # Tolerance: the profile fit is within 1% (measured 0.25%); the weights within 1% of the distance
    # between the two tracked EMAs (measured 0.02%), i.e. far closer to the 0.07 EMA than either snapshot.
    assert r.fit_error < 0.01
    assert (got - want).norm() < 0.01 * (ema05 - ema10).norm()
    assert (got - want).norm() < 0.02 * min((want - ema05).norm(), (want - ema10).norm())
    assert int(r.weights["count"]) == 1000  # buffers: copied from the newest snapshot, not summed


def test_reconstructing_a_tracked_width_returns_its_final_snapshot(toy_run):
    run, tracked, _ = toy_run
    final = load_weights(run / "ema_snapshots" / snapshot_name(1000, 0.05))
    (r,) = reconstruct(run, [0.05], write=False)
    assert r.fit_error == 0.0 and sorted(r.coefficients)[-1] == 1.0 and sum(c != 0 for c in r.coefficients) == 1
    assert all(torch.equal(r.weights[k], final[k]) for k in final)  # bitwise
    # The solver itself (a target a hair away, so the exact-match copy does not apply) lands on the same
    # coefficients: the final 0.05 snapshot alone.
    snaps = find_snapshots(run)
    x, err = solve_posthoc([s.ema_step for s in snaps], [s.gamma for s in snaps], 1000,
                           gamma_from_sigma_rel(0.05) * (1 + 1e-9))
    e = np.array([float(s.ema_step == 1000 and s.sigma_rel == 0.05) for s in snaps])
    assert np.abs(x - e).max() < 1e-6 and err < 1e-6


def test_upto_reconstructs_at_an_earlier_step(toy_run, tmp_path):
    run = Path(shutil.copytree(toy_run[0], tmp_path / "run"))
    (r,) = reconstruct(run, [0.05], upto=520)  # newest snapshot <= 520: step 500
    assert r.step == 500 and r.checkpoint.name == "posthoc_sr0.050_at_00000500"
    final = load_weights(run / "ema_snapshots" / snapshot_name(500, 0.05))
    assert torch.equal(load_weights(r.checkpoint)["w"], final["w"])


def test_corrupt_or_missing_snapshot_is_an_error_naming_the_file(toy_run, tmp_path):
    run = Path(shutil.copytree(toy_run[0], tmp_path / "run"))
    bad = run / "ema_snapshots" / snapshot_name(500, 0.10)
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=str(bad)):
        reconstruct(run, [0.07])
    bad.unlink()
    with pytest.raises(CheckpointError, match=f"{bad} is missing"):
        reconstruct(run, [0.07])
    assert reconstruct(run, [0.07], upto=450, write=False)[0].step == 450  # the snapshots before it still work
    shutil.rmtree(run / "ema_snapshots")
    with pytest.raises(FileNotFoundError, match="ema.posthoc_sigma_rels"):
        reconstruct(run, [0.07])


# ---- in the trainer: config, snapshots, resume --------------------------------------------------
TINY = ("model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=4", "model.attn_dropout=0.1",
        "model.label_dropout=0.1", "train.batch_size=8", "train.device=cpu", "train.log_every=1",
        "train.sample_every=0", "train.ckpt_every=5", "optim.warmup_steps=0", "ema.decay=0.9",
        "ema.posthoc_sigma_rels=[0.05,0.1]")


def train(data, run_dir, steps, *extra, resume=False) -> Trainer:
    cfg = load_config(str(DEMO), [f"data.path={data}", f"train.run_dir={run_dir}", f"train.steps={steps}", *TINY, *extra])
    trainer = Trainer(cfg, resume=resume, progress=False)
    assert trainer.run() == 0
    return trainer


def test_background_snapshots_hold_the_weights_of_their_step(tmp_path, monkeypatch):
    """The trainer writes snapshots in the background (write_snapshots(background=True)) while the EMAs move on:
    the files hold the averages at the call, and flush() is when they are on disk. The writer is held until the
    EMAs have moved, so a snapshot that kept views of the live tensors would hold the later averages."""
    import threading

    import ditlab.train.posthoc_ema as posthoc_ema

    moved, write = threading.Event(), posthoc_ema.write_weights_file
    monkeypatch.setattr(posthoc_ema, "write_weights_file", lambda *a: moved.wait(10) and write(*a))
    model = Toy(8)
    tracked = PosthocEMA(model, (0.05, 0.10))
    for t in range(1, 11):
        with torch.no_grad():
            model.w.copy_(trajectory(t, 8))
        tracked.update(model, t)
    at_10 = [e.module.w.detach().clone() for e in tracked.emas]
    paths = tracked.write_snapshots(tmp_path, 10, background=True)
    for t in range(11, 31):  # the averages change before the thread writes
        with torch.no_grad():
            model.w.fill_(100.0)
        tracked.update(model, t)
    assert not any(p.exists() for p in paths)
    moved.set()
    tracked.flush()
    assert [p.name for p in paths] == [snapshot_name(10, 0.05), snapshot_name(10, 0.1)]
    for p, want in zip(paths, at_10):
        assert torch.equal(load_weights(p)["w"], want)
    assert [s.ema_step for s in find_snapshots(tmp_path)] == [10, 10]
    assert not any(torch.equal(e.module.w, w) for e, w in zip(tracked.emas, at_10))


def test_a_failed_background_snapshot_raises_at_flush_naming_the_file(tmp_path):
    model = Toy(8)
    tracked = PosthocEMA(model, (0.05, 0.10))
    tracked.update(model, 1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "ema_snapshots").write_text("a file where the snapshot folder goes")
    tracked.write_snapshots(run, 1, background=True)  # returns at once: the error is the thread's
    with pytest.raises(CheckpointError, match=r"failed to write .*ema_snapshots/step_00000001_sr0\.050"):
        tracked.flush()
    tracked.flush()  # reported once; nothing is left pending


def test_config_checks():
    load_config(str(DEMO), ["ema.posthoc_sigma_rels=[0.05, 0.1]", "ema.posthoc_every=100"])
    for bad, message in ((["ema.posthoc_sigma_rels=[0.05, 0.5]"], "must lie in"),
                         (["ema.posthoc_sigma_rels=[0.05, 0.0501]"], "first 3 decimals"),
                         (["ema.posthoc_every=-1"], "posthoc_every"), (["ema.every=0"], "ema.every"),
                         (["ema.sigma_rel=0.3", "ema.decay=0.9999"], r"ema.sigma_rel must lie in \(0, 0.2887\]"),
                         (["ema.sigma_rel=-0.1"], "ema.sigma_rel must lie in"),
                         (["ema.sigma_rel=0.05", "ema.decay=0.999"], r"ema.decay=0.999: ema.decay and ema.warmup shape "
                                                                     r"the exponential EMA"),
                         (["ema.sigma_rel=0.05", "ema.decay=0.9999", "ema.warmup=false"],
                          "ema.warmup=False: ema.decay and .* pass ema.warmup=true \\(its default\\)")):
        with pytest.raises(ConfigError, match=message):
            load_config(str(DEMO), bad)
    with pytest.raises(ConfigError, match=r"ema.decay=0.995: .* pass ema.decay=0.9999 \(its default\) beside it"):
        load_config(str(DEMO), ["ema.sigma_rel=0.05"])  # the preset's own decay: reset it to say so
    assert load_config(str(DEMO), ["ema.sigma_rel=0.05", "ema.decay=0.9999"]).ema.sigma_rel == 0.05


def snapshot_files(run: Path) -> dict[str, dict]:
    return {p.name: load_weights(p) for p in sorted((run / "ema_snapshots").glob("*.safetensors"))}


def power_files(folder: Path) -> dict[str, dict]:
    return {p.name: load_weights(p) for p in sorted(folder.glob("ema_power_*.safetensors"))}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("every", [1, 3])
def test_resume_continues_the_power_emas_bitwise(tiny_data, tmp_path, monkeypatch, every):
    extra = (f"ema.every={every}", "ema.posthoc_every=2")
    straight = tmp_path / "straight"
    train(tiny_data, straight, 10, *extra)
    half = tmp_path / "half"
    train(tiny_data, half, 5, *extra)
    split = Path(shutil.copytree(half, tmp_path / "split"))
    trainer = train(tiny_data, split, 10, *extra, resume=True)
    assert [e.last_step for e in trainer.posthoc.emas] == [9 if every == 3 else 10] * 2
    ref, got = snapshot_files(straight), snapshot_files(split)
    # Every 2 steps and at the end of each run (the split run also at its first segment's last step, 5);
    # none before the first update (step 3 with ema.every=3): it would average nothing.
    steps = (2, 4, 6, 8, 10) if every == 1 else (4, 6, 8, 10)
    assert sorted(ref) == [snapshot_name(s, sr) for s in steps for sr in (0.05, 0.1)]
    assert sorted(got) == sorted([*ref, snapshot_name(5, 0.05), snapshot_name(5, 0.1)])
    assert all(same_weights(ref[k], got[k]) for k in ref)
    last_ref, last_got = power_files(straight / "checkpoints/step_00000010"), power_files(split / "checkpoints/step_00000010")
    assert len(last_ref) == 2 and all(same_weights(last_ref[k], last_got[k]) for k in last_ref)
    assert not same_weights(ref[snapshot_name(10, 0.05)], ref[snapshot_name(10, 0.1)])
    state = torch.load(straight / "checkpoints/step_00000010/state.pt", weights_only=True)
    assert state["posthoc_ema"]["sigma_rels"] == [0.05, 0.1] and state["extra_weights"] == sorted(last_ref)

    # Negative control: a resume that does not load the power EMAs is caught by the comparison.
    monkeypatch.setattr(PosthocEMA, "load", lambda self, folder, state: None)
    broken = Path(shutil.copytree(half, tmp_path / "broken"))
    train(tiny_data, broken, 10, *extra, resume=True)
    assert not same_weights(snapshot_files(broken)[snapshot_name(10, 0.05)], ref[snapshot_name(10, 0.05)])


def test_resume_refuses_a_new_sigma_rel_and_supersedes_later_snapshots(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_data, run, 10, "ema.posthoc_every=2")
    shutil.rmtree(run / "checkpoints" / "step_00000010")  # as if resumed from step 5, e.g. after a bad stretch
    (run / "checkpoints" / "latest").write_text("step_00000005\n")
    with pytest.raises(ValueError, match=r"\['sr0.070'\] would average only the steps after 5"):
        train(tiny_data, run, 10, "ema.posthoc_every=2", "ema.posthoc_sigma_rels=[0.05,0.1,0.07]", resume=True)
    capsys.readouterr()
    train(tiny_data, run, 10, "ema.posthoc_every=2", resume=True)
    assert "moved 6 power-EMA snapshot(s) of steps after 5" in capsys.readouterr().out
    assert len(list((run / "ema_snapshots" / "superseded").iterdir())) == 6
    assert len(list((run / "ema_snapshots").glob("*.safetensors"))) == 10  # 2, 4 kept; 6, 8, 10 rewritten


@pytest.mark.parametrize("every", [1, 3])
def test_the_runs_own_ema_as_a_power_ema(tiny_data, tmp_path, monkeypatch, every):
    """ema.sigma_rel: the run's EMA (what sampling and checkpoints' ema.safetensors hold) is the power EMA of that
    width, the same average as post-hoc EMA's tracked width, bit for bit; a resumed run continues it bitwise (its
    last update's step restored), and a resume that dropped that step (the first update after it would copy the
    model) is caught by the same comparison."""
    extra = ("ema.decay=0.9999", "ema.sigma_rel=0.05", f"ema.every={every}", "ema.posthoc_every=2")
    straight = tmp_path / "straight"
    trainer = train(tiny_data, straight, 10, *extra)
    assert isinstance(trainer.ema, PowerEMA) and trainer.ema.last_step == (9 if every == 3 else 10)
    final = load_weights(straight / "checkpoints/step_00000010")  # its EMA weights
    assert same_weights(final, load_weights(straight / "ema_snapshots" / snapshot_name(10, 0.05)))
    assert not same_weights(final, load_weights(straight / "ema_snapshots" / snapshot_name(10, 0.1)))
    state = torch.load(straight / "checkpoints/step_00000010/state.pt", weights_only=True)
    saved = state["config"]["ema"]  # the kind, width and update steps of the run's EMA, which a resume goes on from
    assert saved["sigma_rel"] == 0.05 and state["step"] - state["step"] % saved["every"] == trainer.ema.last_step
    half = tmp_path / "half"
    train(tiny_data, half, 5, *extra)
    split = Path(shutil.copytree(half, tmp_path / "split"))
    assert train(tiny_data, split, 10, *extra, resume=True).ema.last_step == trainer.ema.last_step
    assert same_weights(load_weights(split / "checkpoints/step_00000010"), final)

    monkeypatch.setattr(Trainer, "_resume_ema_kind", lambda self, state, folder: None)
    broken = Path(shutil.copytree(half, tmp_path / "broken"))
    train(tiny_data, broken, 10, *extra, resume=True)
    assert not same_weights(load_weights(broken / "checkpoints/step_00000010"), final)


def test_resume_keeps_the_kind_of_the_runs_ema(tiny_data, tmp_path):
    """A run's EMA cannot turn from exponential into a power EMA, or change its width, at a resume: the average
    so far is of the other profile. Checkpoints written before ema.sigma_rel existed hold the exponential one."""
    run = tmp_path / "run"
    train(tiny_data, run, 5)
    with pytest.raises(ValueError, match=r"with ema.sigma_rel=0.05: .*step_00000005 holds the exponential EMA \(ema"
                                         r".decay\), and continuing it as the power EMA of sigma_rel 0.05"):
        train(tiny_data, run, 10, "ema.decay=0.9999", "ema.sigma_rel=0.05", resume=True)
    state_file = run / "checkpoints" / "step_00000005" / "state.pt"  # its config as saved before the key existed
    state = torch.load(state_file, weights_only=True)
    del state["config"]["ema"]["sigma_rel"]
    torch.save(state, state_file)
    with pytest.raises(ValueError, match=r"holds the exponential EMA \(ema.decay\), and continuing it as the power"):
        train(tiny_data, run, 10, "ema.decay=0.9999", "ema.sigma_rel=0.05", resume=True)
    assert train(tiny_data, run, 10, resume=True).step == 10  # the exponential EMA goes on
    power = tmp_path / "power"
    train(tiny_data, power, 5, "ema.decay=0.9999", "ema.sigma_rel=0.05")
    with pytest.raises(ValueError, match="holds the power EMA of sigma_rel 0.05, and continuing it as the power EMA "
                                         "of sigma_rel 0.1"):
        train(tiny_data, power, 10, "ema.decay=0.9999", "ema.sigma_rel=0.1", resume=True)


def test_default_snapshots_go_with_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, 7, "train.keep_checkpoints=1")
    assert sorted(p.name for p in (run / "ema_snapshots").iterdir()) == \
        [snapshot_name(s, sr) for s in (5, 7) for sr in (0.05, 0.1)]  # never rotated, unlike step_00000005
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000007"]


# ---- `ditlab ema` end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", str(DEMO), f"data.path={tiny_data}", f"train.run_dir={run}", "train.steps=12", *TINY,
                 "train.ckpt_every=4", "ema.posthoc_every=3", "--no-progress"]) == 0
    return run


def test_cli_ema_then_sample(cli_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["ema", str(cli_run), "--sigma-rel", "0.07", "--sigma-rel", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "sigma_rel 0.07 (gamma 11.245) at step 12: fit error" in out and "8 snapshots" in out
    cfg = read_saved_config(cli_run / "config.yaml").ema  # the run's own EMA, on the post-hoc widths' scale
    width = classic_sigma_rel(cfg.decay, 12, cfg.warmup, cfg.every)
    assert f"the run's own EMA (ema.decay {cfg.decay:g}" in out and f"at step 12 is sigma_rel {width:.3f} wide" in out
    folder = cli_run / "checkpoints" / "posthoc_sr0.070"
    assert sorted(p.name for p in folder.iterdir()) == ["ema.safetensors", "state.pt"]
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["step"] == 12 and state["has_model"] is False and state["optimizer"] is None
    assert 0 < state["posthoc_ema"]["fit_error"] < 0.1 and len(state["posthoc_ema"]["coefficients"]) == 8
    # sigma_rel 0.1 is the final 0.1 snapshot itself; the trained model's EMA structure is kept.
    snap = load_weights(cli_run / "ema_snapshots" / snapshot_name(12, 0.1))
    assert same_weights(load_weights(cli_run / "checkpoints" / "posthoc_sr0.100"), snap)
    assert load_weights(folder).keys() == load_weights(cli_run / "checkpoints" / "step_00000012", "ema").keys()
    assert find_latest_checkpoint(cli_run).name == "step_00000012"  # latest never names a post-hoc folder

    out_npz = tmp_path / "s.npz"
    assert main(["sample", str(cli_run), "--checkpoint", "posthoc_sr0.070", "-n", "3", "--steps", "2",
                 "--sampler", "euler", "--out", str(out_npz), "--device", "cpu"]) == 0
    d = np.load(out_npz)
    assert d["arr_0"].shape == (3, 16, 16, 3) and "posthoc_sr0.070" in str(d["ditlab_meta"])
    # The model weights and the optimizer state are not there: errors that say so, not a missing file.
    capsys.readouterr()
    assert main(["sample", str(cli_run), "--checkpoint", "posthoc_sr0.070", "-n", "1", "--steps", "1",
                 "--weights", "model", "--out", str(tmp_path / "m.npz")]) == 1
    assert "holds EMA weights only" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no optimizer state, so it cannot be resumed"):
        load_checkpoint(folder, optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    assert load_checkpoint(folder)["posthoc_ema"]["sigma_rel"] == 0.07  # state alone is fine


@pytest.mark.parametrize("argv,message", [
    (["--sigma-rel", "0.5"], "--sigma-rel: must lie in"),
    (["--sigma-rel", "0.07", "--sigma-rel", "0.0701"], "must differ in their first 3 decimals"),
    ([], "--sigma-rel"),
    (["--sigma-rel", "0.07", "--device", "cpu"], "unrecognized arguments: --device"),
    (["--sigma-rel", "0.07", "--upto", "0"], "--upto: must be >= 1"),
    (["--sigma-rel", "0.07", "--upto", "2"], "no snapshots up to step 2"),
])
def test_cli_ema_bad_input(cli_run, capsys, argv, message):
    assert main(["ema", str(cli_run), *argv]) == 1
    assert message in capsys.readouterr().err


def test_cli_ema_names_a_corrupt_snapshot(cli_run, tmp_path, capsys):
    run = Path(shutil.copytree(cli_run, tmp_path / "run"))
    bad = run / "ema_snapshots" / snapshot_name(6, 0.05)
    bad.write_bytes(b"not safetensors")
    assert main(["ema", str(run), "--sigma-rel", "0.07"]) == 1
    assert f"snapshot {bad} is unreadable" in capsys.readouterr().err
    assert main(["ema", str(tmp_path / "nope"), "--sigma-rel", "0.07"]) == 1
    assert "not a ditlab run directory" in capsys.readouterr().err
