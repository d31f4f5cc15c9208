"""Two-process CPU (gloo) data parallelism through the real launcher: torchrun + `ditlab train|sample|fid`.

Checks the issue-8 semantics: rank 0 writes, the EMA carries no "module." prefix and loads into a
plain model, a 2-process run resumed on 2 processes repeats the uninterrupted one exactly, a
2-process checkpoint resumes on 1 process (re-seeded, said so), and sampling / FID sharded over 2
processes give the 1-process sample set and score.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditlab.cli import main

from tests.eval.helpers import random_images, write_zip

TINY = [
    "model.arch=DiT-S/4",
    "model.hidden_size=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.num_classes=4",
    "model.attn_dropout=0.1",
    "train.batch_size=8",
    "train.device=cpu",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=2",
    "optim.lr=1e-3",
    "ema.decay=0.9",
]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",  # torchrun picks a free port itself: no race with a port chosen here
        "-m",
        "ditlab",
        *args,
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([os.path.abspath("src"), os.path.abspath("."), os.environ.get("PYTHONPATH", "")]),
    )
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, f"torchrun {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return str(path)


def weights(run, step, which="model.safetensors"):
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / which))


def train_args(data, run_dir, steps: int, *extra: str) -> list[str]:
    """`ditlab train` of the tiny demo model on ``data`` into ``run_dir`` for ``steps`` steps."""
    return ["train", "configs/demo.yaml", *TINY, f"data.path={data}", f"train.run_dir={run_dir}",
            f"train.steps={steps}", *extra, "--no-progress"]


@pytest.fixture(scope="module")
def two_rank_runs(data, tmp_path_factory):
    """A 2-process run of 6 steps, and one of 4 steps resumed for 2 more on 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    straight, resumed = root / "straight", root / "resumed"
    out = torchrun(2, *train_args(data, straight, 6))
    torchrun(2, *train_args(data, resumed, 4))
    torchrun(2, *train_args(data, resumed, 6, "--resume"))
    return straight, resumed, out


def test_rank0_writes_and_ema_is_unwrapped(two_rank_runs):
    straight, _, out = two_rank_runs
    assert out.stdout.count("finished at step 6") == 1  # only rank 0 speaks
    steps = [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # one log line per step, not one per rank
    ema = weights(straight, 6, "ema.safetensors")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ema)
    state = torch.load(straight / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # ranks draw apart
    assert json.loads((straight / "summary.json").read_text())["world_size"] == 2

    from ditlab.runs import load_run

    run = load_run(straight, device="cpu")  # the EMA loads into a plain (unwrapped) model
    for k, v in run.model.state_dict().items():
        if k in ema:
            assert torch.equal(v, ema[k])


def test_two_rank_resume_repeats_the_uninterrupted_run(two_rank_runs):
    straight, resumed, _ = two_rank_runs
    for which in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, 6, which), weights(resumed, 6, which)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (which, k)


def test_resume_on_another_world_size(two_rank_runs, data, tmp_path):
    _, resumed, _ = two_rank_runs
    import shutil

    run = tmp_path / "one"
    shutil.copytree(resumed, run)
    # The copied config names the old run directory: pass the new one, as a user would.
    code = main(train_args(data, run, 8, "--resume"))
    assert code == 0
    state = torch.load(run / "checkpoints" / "step_00000008" / "state.pt", weights_only=True)
    assert state["step"] == 8 and "rng_ranks" not in state
    position = state["data"]["epoch"] * 64 + state["data"]["offset"]
    assert position == 8 * 8  # the global data position went on: 8 steps of 8 images


def test_sharded_sampling_and_fid_equal_one_process(two_rank_runs, tmp_path, standin_path):
    straight, _, _ = two_rank_runs
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    common = [
        "sample",
        str(straight),
        "-n",
        "10",
        "--steps",
        "3",
        "--sampler",
        "heun",
        "--cfg",
        "1.5",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    assert main([*common, "--out", str(one)]) == 0
    torchrun(2, *common, "--out", str(two))
    a, b = np.load(one)["arr_0"].astype(int), np.load(two)["arr_0"].astype(int)
    assert a.shape == b.shape == (10, 16, 16, 3)
    assert np.abs(a - b).max() <= 1  # the same samples, up to BLAS rounding
    assert np.array_equal(np.load(one)["arr_1"], np.load(two)["arr_1"])

    ref = write_zip(tmp_path / "ref.zip", random_images(24, size=16, seed=1))
    fid_args = [
        "fid",
        str(one),
        "--ref",
        str(ref),
        "--inception",
        str(standin_path),
        "--device",
        "cpu",
        "--no-progress",
    ]
    res = torchrun(2, *fid_args)
    fid_two = json.loads(res.stdout.strip().splitlines()[-1])["fid"]
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(fid_args) == 0
    fid_one = json.loads(buf.getvalue().strip().splitlines()[-1])["fid"]
    assert fid_two == pytest.approx(fid_one, rel=1e-6)  # feature batches split differently


def test_a_power_ema_as_the_runs_ema_on_two_ranks(data, tmp_path):
    """ema.sigma_rel under DDP: every rank keeps the run's power EMA (rank 0's is saved) and, resumed on two
    processes, every rank goes on from the step of its last update that rank 0's checkpoint recorded, so the
    resumed run's EMA is the uninterrupted one's, bit for bit, and equals rank 0's tracked post-hoc EMA of the
    same width."""
    power = ("ema.decay=0.9999", "ema.sigma_rel=0.1", "ema.posthoc_sigma_rels=[0.1]", "ema.posthoc_every=2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(2, *train_args(data, straight, 6, *power))
    torchrun(2, *train_args(data, resumed, 4, *power))
    torchrun(2, *train_args(data, resumed, 6, *power, "--resume"))
    a, b = weights(straight, 6, "ema.safetensors"), weights(resumed, 6, "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tracked = weights(straight, 6, "ema_power_sr0.100.safetensors")
    assert all(torch.equal(a[k], tracked[k]) for k in a)
