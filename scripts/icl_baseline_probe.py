"""CPU probes of the deterministic ICL baseline's plateau (issue 6; BENCHMARKS.md, "CPU probes").

    PYTHONPATH=src python scripts/icl_baseline_probe.py train VARIANT RUN [--steps 4000] [--seed 0]
    PYTHONPATH=src python scripts/icl_baseline_probe.py inspect RUN

`train`: configs/icl_small.yaml with icl.objective=mse, no compile, one thread, and VARIANT:
  default       the preset (adaLN-Zero: zero output layer)
  lr1e-4        optim.lr=1e-4 (Garg et al.'s learning rate)
  nocurr        no curriculum (full size from step 0)
  xavier        model.output_init=xavier
  gates         the blocks' modulation weights drawn with std 0.02 after the usual init (not an option:
                patched here, to test whether zero-initialised blocks are what holds the baseline)
  xavier_gates  both
`inspect`: the spread of the trained baseline's predictions over 256 prompts (a constant predictor has
~0) and the largest weight of its output layer.
"""
from __future__ import annotations

import argparse
import json

import torch

from ditlab.config import load_config
from ditlab.models import dit as dit_module

OVERRIDES = {"default": [], "lr1e-4": ["optim.lr=1e-4"], "nocurr": ["icl.d_start=0", "icl.points_start=0"],
             "xavier": ["model.output_init=xavier"], "gates": [], "xavier_gates": ["model.output_init=xavier"]}


def random_block_modulation() -> None:
    init = dit_module.DiT.initialize_weights

    def patched(self):
        init(self)
        for block in self.blocks:
            torch.nn.init.normal_(block.adaLN.weight, std=0.02)

    dit_module.DiT.initialize_weights = patched


def train(a) -> None:
    from ditlab.train.trainer import Trainer

    if a.variant.endswith("gates"):
        random_block_modulation()
    log_every = 250 if a.steps <= 4000 else 500
    cfg = load_config("configs/icl_small.yaml", [
        "icl.objective=mse", f"train.steps={a.steps}", f"train.seed={a.seed}", "train.compile=false",
        "train.time_limit=0", f"train.run_dir={a.run}", "train.ckpt_every=100000", f"train.log_every={log_every}",
        *OVERRIDES[a.variant]])
    Trainer(cfg, progress=False).run()


def inspect(a) -> None:
    from ditlab.runs import load_run
    from ditlab.tasks.icl.data import draw_prompts

    run = load_run(a.run, which="model")
    c = run.cfg.icl
    torch.manual_seed(0)
    p = draw_prompts(256, c.n_points, c.d, c.tau, c.sigma)
    with torch.no_grad():
        pred = run.task.predict(run.model, p.x, p.y)
    out_weight = max(f.linear.weight.abs().max().item() for f in run.model.final.values())
    print(json.dumps({"run": a.run, "prediction_std": pred.std().item(), "y_std": p.y.std().item(),
                      "output_layer_max_abs_weight": out_weight}))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("variant", choices=sorted(OVERRIDES))
    t.add_argument("run")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("inspect")
    i.add_argument("run")
    a = p.parse_args()
    torch.set_num_threads(1)
    train(a) if a.cmd == "train" else inspect(a)


if __name__ == "__main__":
    main()
