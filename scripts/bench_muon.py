"""One Muon step over a DiT's block matrices (optim.name=muon): torch.optim.Muon against ditlab's BatchedMuon.

    python scripts/bench_muon.py --arch DiT-S/2                 # CPU: the op counts (timings mean little there)
    python scripts/bench_muon.py --arch DiT-S/2 DiT-B/2 --device cuda
    python scripts/bench_muon.py --agreement      # BatchedMuon against torch.optim.Muon, four steps
    python scripts/bench_muon.py --compile-agreement   # optim.muon_compile=default against the eager update

BatchedMuon is timed eager and with its per-shape update compiled (optim.muon_compile: default, and
reduce-overhead, i.e. CUDA graphs, on a GPU); the compiled ones after three warm-up steps (compilation).

Per implementation, one JSON line: the aten ops one step dispatches (each a kernel launch on the GPU; counted
with a TorchDispatchMode) and the step's time (median of --repeats; on CUDA with synchronisation around it).
The matrices are the ones optim.name=muon gives Muon (ditlab.train.optim.muon_parameters), random gradients.
--agreement: the largest difference between the two implementations' weights after four steps from the same
weights and gradients (tests/train/test_muon.py's case), beside how far the steps moved them, per setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ditlab.models.dit import DiT, StreamSpec, parse_arch
from ditlab.train.muon import BatchedMuon
from ditlab.train.optim import muon_parameters


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def agreement() -> None:
    from tests.train.test_muon import _grads, _params  # the test's matrices (wide, tall, square) and gradients

    for nesterov in (True, False):
        for adjust in ("match_rms_adamw", "original"):
            ours, ref = _params(), _params()
            start = [q.detach().clone() for q in ours]
            kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust)
            opts = [(ours, BatchedMuon(ours, **kw)), (ref, torch.optim.Muon(ref, **kw))]
            for step in range(4):
                for params, opt in opts:
                    for q, g in zip(params, _grads(params, step)):
                        q.grad = g
                    opt.step()
            print(json.dumps({"nesterov": nesterov, "adjust_lr_fn": adjust,
                              "max_abs_difference": max((a - b).abs().max().item() for a, b in zip(ours, ref)),
                              "max_abs_move": max((a - b).abs().max().item() for a, b in zip(ours, start)),
                              "torch": torch.__version__}), flush=True)


def compile_agreement() -> None:
    """The compiled update (optim.muon_compile=default) against the eager one over three steps, the second skipped
    (found_inf), as tests/train/test_muon.py runs them; beside it what a wrong formula would give (no weight decay,
    no Nesterov look-ahead): the largest difference over the matrices, relative to how far the eager steps moved
    them."""
    from tests.train.test_muon import _grads, _params

    def run(**kw):
        params = _params()
        opt = BatchedMuon(params, **{"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, **kw})
        for step in range(3):
            for q, g in zip(params, _grads(params, step)):
                q.grad = g if step != 1 else torch.full_like(q, float("nan"))
            opt.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
            opt.step()
        return params

    eager, start = run(), _params()
    for name, kw in (("compile=default", {"compile": "default"}), ("weight_decay=0", {"weight_decay": 0.0}),
                     ("nesterov=False", {"nesterov": False})):
        other = run(**kw)
        rel = max(float((a - b).abs().max() / (a - s).abs().max()) for a, b, s in zip(eager, other, start))
        print(json.dumps({"against_eager": name, "max_difference_over_move": round(rel, 4),
                          "torch": torch.__version__}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["DiT-S/2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--agreement", action="store_true", help="BatchedMuon against torch.optim.Muon instead (CPU)")
    p.add_argument("--compile-agreement", action="store_true",
                   help="the compiled update against the eager one, beside two wrong formulas, instead (CPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.agreement:
        return agreement()
    if args.compile_agreement:
        return compile_agreement()
    # (name, optimizer class, extra kwargs); the compiled updates (optim.muon_compile) compile at their first step
    impls = [("BatchedMuon", BatchedMuon, {}), ("BatchedMuon compile=default", BatchedMuon, {"compile": "default"})]
    if device.type == "cuda":  # CUDA graphs
        impls.append(("BatchedMuon compile=reduce-overhead", BatchedMuon, {"compile": "reduce-overhead"}))
    if hasattr(torch.optim, "Muon"):
        impls.append(("torch.optim.Muon", torch.optim.Muon, {}))
    for arch in args.arch:
        hidden, depth, heads, patch = parse_arch(arch)
        torch.manual_seed(0)
        model = DiT([StreamSpec("image", 3, 32, patch)], hidden_size=hidden, depth=depth, num_heads=heads,
                    num_classes=10)
        matrices = muon_parameters(model)
        for name, cls, extra in impls:
            torch._dynamo.reset()
            params = [torch.nn.Parameter(m.detach().clone().to(device)) for m in matrices]
            opt = cls(params, lr=1e-3, weight_decay=0.0, momentum=0.95, adjust_lr_fn="match_rms_adamw", **extra)
            for q in params:
                q.grad = torch.randn_like(q)
            for _ in range(3 if extra else 1):
                opt.step()  # the momentum buffers exist from here on (and the compiled graphs, recorded)
            ops = None
            if not extra:  # a dispatch mode does not see inside compiled kernels: eager implementations only
                counter = OpCount()
                with counter:
                    opt.step()
                ops = counter.count
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(1000 * (time.perf_counter() - t0))
            print(json.dumps({"arch": arch, "impl": name, "matrices": len(params),
                              "shapes": len({tuple(q.shape) for q in params}), "aten_ops_per_step": ops,
                              "step_ms": round(statistics.median(times), 3), "device": str(device),
                              "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
