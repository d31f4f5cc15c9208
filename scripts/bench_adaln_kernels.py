"""The fused adaLN kernels alone (issue 17, docs/performance.md): time against the memory-traffic floor and
against what torch.compile makes of the eager mathematics, over the kernels' tile knobs.

    python scripts/bench_adaln_kernels.py                          # the DiT-S/2 and DiT-B/2 shapes, bf16
    python scripts/bench_adaln_kernels.py --sweep --out K.jsonl    # also each tile / rows / warps / accumulation /
                                                                   # stages setting, one knob at a time
    python scripts/bench_adaln_kernels.py --sweep --knobs BWD_LOOP_STAGES   # the sweep over some knobs only
    TRITON_INTERPRET=1 python scripts/bench_adaln_kernels.py --smoke   # CPU: the script's logic, tiny shapes

One JSON line per (shape, kernel, setting): milliseconds (median of --repeats, CUDA events around --iters
calls), the bytes the kernel must move at least, and the achieved GB/s. "fused" rows call the custom op
directly (forward: ditlab::adaln_fwd; backward: ditlab::adaln_bwd with the forward's saved tensors);
"inductor" rows time torch.compile of the reference (ditlab.models.kernels.reference), compiled afresh with
static shapes per shape: its forward without autograd, and its backward alone (autograd.grad over a retained
graph with ready output gradients), so both sides do the same mathematics. The end-to-end effect is scripts/bench_train.py's.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

from ditlab.bench import time_calls_ms

SHAPES = {  # name: (B, N, D, groups): groups "sample" (G = 1), or "streams" (two contiguous streams, an index)
    "S2": (256, 256, 384, "sample"),
    "B2": (256, 256, 768, "sample"),
    "superres_S2": (256, 320, 384, "streams"),
    "XL_D1152": (64, 256, 1152, "sample"),
}
SMOKE_SHAPES = {"tiny": (2, 40, 48, "sample"), "tiny_streams": (2, 40, 48, "streams")}


def make_inputs(B, N, D, groups, dtype, device, residual: bool):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(device=device, dtype=dtype)

    G, index = 1, None
    if groups == "streams":
        G = 2
        index = torch.cat([torch.zeros(N // 5, dtype=torch.int32), torch.ones(N - N // 5, dtype=torch.int32)]).to(device)
    mods = rnd(B, G, 3 * D, s=0.1)  # a chunked adaLN output: strided (B, G, D) views, as in the model
    shift, scale, gate = mods.chunk(3, dim=-1)
    x = rnd(B, N, D)
    branch = rnd(B, N, D) if residual else None
    return x, branch, (gate if residual else None), shift, scale, index


def floor_bytes(B, N, D, elem: int, residual: bool, backward: bool) -> int:
    """What the kernel must read and write at least (the (B, N, D) tensors; modulation and row stats are small)."""
    U = B * N * D * elem
    if not backward:
        return (4 if residual else 2) * U  # x (+ branch) in; y (+ x') out
    return (6 if residual else 3) * U  # x' (+ branch), dy (+ dx') in; dx (+ dbranch) out


def time_graph_ms(fn, iters: int, repeats: int) -> float | None:
    """GPU time per call with the host out of the way: ``iters`` calls captured in one CUDA graph, replayed.
    None when the calls cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                fn()
    except Exception as e:  # noqa: BLE001  (a measurement that cannot be taken is reported, not fatal)
        print(json.dumps({"graph_capture_failed": str(e)[:200]}), flush=True)
        return None
    return statistics.median(time_calls_ms(graph.replay, 1, repeats, torch.device("cuda"))) / iters


def fused_fns(x, branch, gate, shift, scale, index):
    """(forward, backward) closures over the custom ops, the backward with the forward's saved tensors."""
    out_dtype = shift.dtype
    fwd = lambda: torch.ops.ditlab.adaln_fwd(x, branch, gate, shift, scale, index, out_dtype)  # noqa: E731
    y, xnew, mean, rstd = fwd()
    xn = xnew if branch is not None else x
    dy = torch.randn_like(y)
    dxn = torch.randn_like(xn) if branch is not None else None
    bwd = lambda: torch.ops.ditlab.adaln_bwd(xn, branch, gate, scale, index, mean, rstd, dy, dxn,  # noqa: E731
                                             x.dtype, shift.dtype)
    return fwd, bwd


def inductor_fns(x, branch, gate, shift, scale, index):
    """(forward, backward) of torch.compile'd reference mathematics at this fixed shape: the forward without
    autograd, and the backward alone (torch.autograd.grad over a retained graph, with output gradients made
    once), so neither side pays for gradient allocation or accumulation that the fused op does not do."""
    from ditlab.models.kernels.reference import adaln_modulate_ref, gate_residual_adaln_ref

    torch._dynamo.reset()  # a fresh, static-shape compile per shape (not a dynamic one after the first)
    idx = None if index is None else index.long()
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, branch, gate, shift, scale) if t is not None]
    if branch is None:
        f = torch.compile(lambda a, sh, sc: (adaln_modulate_ref(a, sh, sc, idx),), dynamic=False)
    else:
        f = torch.compile(lambda a, b, gt, sh, sc: gate_residual_adaln_ref(a, b, gt, sh, sc, idx), dynamic=False)

    def fwd():
        with torch.no_grad():
            return f(*leaves)

    outs = f(*leaves)
    grads = [torch.randn_like(o) for o in outs]

    def bwd():
        return torch.autograd.grad(outs, leaves, grads, retain_graph=True)

    return fwd, bwd


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=None, help=f"of {', '.join(SHAPES)} (default: all)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweep", action="store_true", help="each knob (tile, rows, backward warps / accumulation / "
                   "launch pipelining stages / row-loop pipelining stages) varied alone from the defaults: 14 "
                   "settings")
    p.add_argument("--knobs", default=None, help="comma-separated knobs the sweep varies (default: all), e.g. "
                   "BWD_LOOP_STAGES or BWD_ACC,BWD_LOOP_STAGES")
    p.add_argument("--grid", action="store_true", help="every combination of the knobs' values: 576 settings (long)")
    p.add_argument("--no-inductor", action="store_true", help="skip the torch.compile reference rows")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 iteration (CPU through TRITON_INTERPRET=1)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()

    from ditlab.models.kernels import adaln_triton as K  # registers the ops; needs Triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shapes = SMOKE_SHAPES if args.smoke else {k: SHAPES[k] for k in (args.shapes or SHAPES)}
    iters, repeats = (1, 1) if args.smoke else (args.iters, args.repeats)
    knobs = ("TILE", "ROWS_PER_PROGRAM", "BWD_WARPS", "BWD_ACC", "BWD_STAGES", "BWD_LOOP_STAGES")
    values = {"TILE": [1024, 2048, 4096, 8192], "ROWS_PER_PROGRAM": [32, 64, 128], "BWD_WARPS": [0, 8],
              "BWD_ACC": ["row", "tile"], "BWD_STAGES": [0, 1, 2], "BWD_LOOP_STAGES": [0, 2, 3, 4, "auto"]}
    default = tuple(getattr(K, k) for k in knobs)
    varied = args.knobs.split(",") if args.knobs else list(knobs)
    for k in varied:
        if k not in knobs:
            p.error(f"--knobs: {k!r} is not one of {', '.join(knobs)}")
    settings = [default]
    if args.grid:
        settings = list(itertools.product(*(values[k] for k in knobs)))
    elif args.sweep:  # one knob at a time
        settings += [default[:i] + (v,) + default[i + 1:] for i, k in enumerate(knobs) for v in values[k]
                     if v != default[i] and k in varied]
    if args.smoke and (args.sweep or args.grid):
        settings = settings[:1] + [s for s in settings if s[3] != default[3]][:1]  # the accumulation both ways
    elem = torch.finfo(dtype).bits // 8

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    for name, (B, N, D, groups) in shapes.items():
        for residual in (False, True):
            inputs = make_inputs(B, N, D, groups, dtype, device, residual)
            base = {"shape": name, "B": B, "N": N, "D": D, "groups": groups, "dtype": args.dtype,
                    "residual": residual, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else "cpu (interpreter: timings mean nothing)"}
            for setting in settings:
                for knob, value in zip(knobs, setting):
                    setattr(K, knob, value)
                tile, rows, warps, acc, stages, loop_stages = setting
                fwd, bwd = fused_fns(*inputs)
                for kernel, fn, backward in (("fwd", fwd, False), ("bwd", bwd, True)):
                    if not backward and setting[1:] != settings[0][1:]:
                        continue  # the forward depends on the tile alone: once per tile
                    fn()  # compile this setting's kernel
                    ms = statistics.median(time_calls_ms(fn, iters, repeats, device))
                    ms_graph = time_graph_ms(fn, iters, repeats) if device.type == "cuda" else None
                    need = floor_bytes(B, N, D, elem, residual, backward)
                    gpu_ms = ms_graph or ms
                    knob_fields = {"rows": rows, "bwd_warps": warps, "bwd_acc": acc, "bwd_stages": stages,
                                   "bwd_loop_stages": loop_stages} if backward else {}  # forward: the tile alone
                    emit({**base, "impl": "fused", "kernel": kernel, "tile": tile, **knob_fields,
                          "gb_basis": "graph" if ms_graph else "launch",
                          "ms": round(ms, 4), "ms_graph": ms_graph and round(ms_graph, 4),
                          "floor_mb": round(need / 1e6, 1), "gb_per_s": round(need / gpu_ms / 1e6, 1)})
            if not args.no_inductor and not args.smoke:
                fwd, bwd = inductor_fns(*inputs)
                for kernel, fn, backward in (("fwd", fwd, False), ("bwd", bwd, True)):
                    for _ in range(3):  # compile, then warm
                        fn()
                    ms = statistics.median(time_calls_ms(fn, iters, repeats, device))
                    # autograd.grad cannot be captured in a CUDA graph, and a failed capture leaves the CUDA
                    # generator unusable for the rest of the process (measured on the H200): no graph time for
                    # the reference backward, so compare the backward on launch time ("ms") alone.
                    capturable = device.type == "cuda" and not backward
                    ms_graph = time_graph_ms(fn, iters, repeats) if capturable else None
                    need = floor_bytes(B, N, D, elem, residual, backward)
                    emit({**base, "impl": "inductor", "kernel": kernel, "ms": round(ms, 4),
                          "ms_graph": ms_graph and round(ms_graph, 4), "floor_mb": round(need / 1e6, 1),
                          "gb_basis": "graph" if ms_graph else "launch",
                          "gb_per_s": round(need / max(ms_graph or ms, 1e-9) / 1e6, 1)})


if __name__ == "__main__":
    main()
