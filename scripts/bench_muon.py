"""One Muon step over a DiT's block matrices (optim.name=muon): torch.optim.Muon against ditlab's BatchedMuon.

    python scripts/bench_muon.py --arch DiT-S/2                 # CPU: the op counts (timings mean little there)
    python scripts/bench_muon.py --arch DiT-S/2 DiT-B/2 --device cuda
    python scripts/bench_muon.py --agreement      # BatchedMuon against torch.optim.Muon, four steps

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["DiT-S/2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--agreement", action="store_true", help="BatchedMuon against torch.optim.Muon instead (CPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.agreement:
        return agreement()
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
