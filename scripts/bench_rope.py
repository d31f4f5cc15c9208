"""Where RoPE's cost in a training step comes from, and which way of writing it is cheapest under torch.compile.

    python scripts/bench_rope.py                    # the DiT-S/2 and DiT-B/2 attention shapes, bf16, on the GPU
    python scripts/bench_rope.py --shapes S2 --variants pairs pairs_swapped none   # a part (each compiles)
    python scripts/bench_rope.py --smoke            # CPU: tiny shapes, eager; the script's logic and equivalences

Why: on an H100 a compiled DiT-S/2 step with 2-D RoPE spends 48.6 ms on the GPU against 42.2 ms with sin-cos
positions (scripts/profile_train.py; BENCHMARKS.md "RoPE's cost in a training step"). Almost all of it is in the
kernels Inductor makes of the q / k RMSNorm and the rotation together, above all their backward (one 5.6-ms kernel
where sin-cos has two of 0.7 ms). The rotation itself is a few multiply-adds per element: the difference is in
how its backward is written.

Each variant takes the qkv projection's output (B, N, 3D), as the model does, splits q and k into heads, applies
the qk RMSNorm and the rotation; the timed step is the compiled forward and its backward (CUDA events). One JSON
line per (shape, variant): ms per step (median of --repeats), and the largest difference of the outputs and of the
input gradient against the library's rotation (``ditlab.models.rotary.apply_rope``). Variants:

- ``pairs``: the library's rotation (``ditlab.models.rotary.apply_rope``).
- ``pairs_swapped``: x * cos + swap(x) * sin with (N, hd) tables, swap exchanging each pair's two elements (no
  unbind / stack, so its backward is the same elementwise form).
- ``transposed_backward``: ``pairs`` forward, its backward written as the rotation of the gradient by the opposite
  angle (a rotation's transpose). These two were library forms in the twenty-first session; measured in the
  whole step on an H100 (twenty-second), neither changed it (BENCHMARKS.md), so only the bench keeps them.
- ``activation_dtype``: the ``pairs`` formula without the fp32 upcast (bf16 arithmetic: not bit-identical).
- ``complex``: a complex multiply of the pairs (view_as_complex), as torchtitan writes it (Inductor does not
  generate code for complex operators: expect it slow).
- ``rotate_half``: pairs (i, i + hd/2) instead of (2i, 2i+1) (the GPT-NeoX layout): the same model up to a fixed
  permutation of the head channels, not the same function of a trained checkpoint; its differences are taken
  after that permutation.
- ``none``: the qk RMSNorm without any rotation: what sin-cos positions pay.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from ditlab.bench import time_calls_ms
from ditlab.devices import device_name
from ditlab.models.embed import rope_2d
from ditlab.models.rotary import apply_rope as rotate_pairs

SHAPES = {"S2": (256, 256, 384, 6), "B2": (256, 256, 768, 12)}  # (B, N, D, heads): 32x32 images in 2x2 patches
SMOKE_SHAPES = {"tiny": (2, 16, 32, 2)}


def rope_pairs_swapped(x, cos, sin):
    cos2 = cos.repeat_interleave(2, dim=-1)  # (N, hd): each pair's angle twice
    sin2 = torch.stack((-sin, sin), dim=-1).flatten(-2)  # (N, hd): -sin for a pair's first element, +sin its second
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i])
    return (xf * cos2 + swapped * sin2).type_as(x)


class _RotateTransposedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate_pairs(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return rotate_pairs(grad, cos, -sin), None, None  # the tables are buffers: no gradient


def rope_transposed_backward(x, cos, sin):
    return _RotateTransposedBackward.apply(x, cos, sin)


def rope_activation_dtype(x, cos, sin):
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def rope_complex(x, cos, sin):
    rotation = torch.complex(cos, sin)  # (N, hd/2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


def rope_rotate_half(x, cos, sin):
    cos2, sin2 = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos2 + torch.cat((-x2, x1), dim=-1) * sin2).type_as(x)


def rope_none(x, cos, sin):
    return x


def half_permutation(head_dim: int) -> torch.Tensor:
    """Channel order that maps the interleaved pairs (2i, 2i+1) onto the halves (i, i + hd/2)."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


VARIANTS = {"pairs": rotate_pairs, "pairs_swapped": rope_pairs_swapped, "transposed_backward": rope_transposed_backward,
            "activation_dtype": rope_activation_dtype, "complex": rope_complex, "rotate_half": rope_rotate_half,
            "none": rope_none}


def qk_step(rope, heads: int):
    """(qkv (B, N, 3D), q / k norm weights, cos, sin) -> rotated (q, k), each (B, H, N, hd), as the model's
    self-attention makes them (ditlab.models.attention)."""
    def step(qkv, wq, wk, cos, sin):
        q, k, _ = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        q = F.rms_norm(q, (q.shape[-1],), wq.to(q.dtype), 1e-6)
        k = F.rms_norm(k, (k.shape[-1],), wk.to(k.dtype), 1e-6)
        return rope(q, cos, sin), rope(k, cos, sin)
    return step


def make_inputs(B, N, D, heads, dtype, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hd = D // heads
    grid = int(round(N ** 0.5))
    cos, sin = rope_2d(grid, grid, hd)
    qkv = torch.randn(B, N, 3 * D, generator=g).to(device=device, dtype=dtype)
    wq = (1 + 0.1 * torch.randn(hd, generator=g)).to(device)
    wk = (1 + 0.1 * torch.randn(hd, generator=g)).to(device)
    grads = [torch.randn(B, heads, N, hd, generator=g).to(device=device, dtype=dtype) for _ in range(2)]
    return qkv, wq, wk, cos.to(device), sin.to(device), grads


def run_once(fn, qkv, wq, wk, cos, sin, grads):
    """Forward and backward; (outputs, the gradient of qkv)."""
    qkv = qkv.detach().requires_grad_(True)
    outs = fn(qkv, wq, wk, cos, sin)
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs], qkv.grad


def differences(name: str, outs, grad, ref_outs, ref_grad, heads: int) -> dict:
    if name == "none":
        return {}
    if name == "rotate_half":  # compare in the interleaved channel order
        hd = outs[0].shape[-1]
        order = half_permutation(hd).to(outs[0].device)
        inverse = torch.argsort(order)
        outs = [o[..., inverse] for o in outs]
        ref_grad_by_head = ref_grad.unflatten(-1, (3, heads, hd))
        grad_by_head = grad.unflatten(-1, (3, heads, hd))
        # its input channels are permuted too (the same model with q / k weights reordered): q and k only
        grad = grad_by_head.clone()
        grad[..., :2, :, :] = grad_by_head[..., :2, :, inverse]
        grad, ref_grad = grad.flatten(-3), ref_grad_by_head.flatten(-3)
    return {"max_abs_diff_out": max(float((o - r).float().abs().max()) for o, r in zip(outs, ref_outs)),
            "max_abs_diff_grad": float((grad - ref_grad).float().abs().max())}


def bench(shapes: dict, variants: list[str], device, dtype, compile_: bool, iters: int, repeats: int):
    for shape_name, (B, N, D, heads) in shapes.items():
        args = make_inputs(B, N, D, heads, dtype, device)
        qkv, wq, wk, cos, sin, grads = args
        if "rotate_half" in variants:  # rotate_half sees the same model: its q / k channels in the halves order
            order = half_permutation(D // heads).to(device)
        ref_outs, ref_grad = run_once(qk_step(rotate_pairs, heads), *args)
        for name in variants:
            step = qk_step(VARIANTS[name], heads)
            # Every variant is the same code object with another closure: without a reset, Dynamo would count
            # them as recompilations of one function and run those past its cache limit eagerly.
            torch._dynamo.reset()
            fn = torch.compile(step, dynamic=False) if compile_ else step
            run_args = args
            if name == "rotate_half":
                by_head = qkv.unflatten(-1, (3, heads, D // heads)).clone()
                by_head[..., :2, :, :] = by_head[..., :2, :, order]
                run_args = (by_head.flatten(-3), wq[order], wk[order], cos, sin,
                            [g[..., order] for g in grads])
            outs, grad = run_once(fn, *run_args)  # compiles here
            row = {"shape": shape_name, "B": B, "N": N, "D": D, "heads": heads, "variant": name,
                   "dtype": str(dtype).removeprefix("torch."), "compiled": compile_,
                   "machine": device_name(device), "torch": torch.__version__}
            row.update(differences(name, outs, grad, ref_outs, ref_grad, heads))
            times = time_calls_ms(lambda: run_once(fn, *run_args), iters, repeats, device)
            row["ms"] = round(statistics.median(times), 4)
            print(json.dumps(row), flush=True)
            yield row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, eager, fp32: the logic only")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="time the eager code")
    args = p.parse_args(argv)
    if args.smoke:
        return list(bench(SMOKE_SHAPES, args.variants, torch.device("cpu"), torch.float32, False, 2, 1))
    if not torch.cuda.is_available():
        raise SystemExit("bench_rope.py times CUDA kernels: run it on a GPU, or pass --smoke on the CPU")
    return list(bench({k: SHAPES[k] for k in args.shapes}, args.variants, torch.device("cuda"), torch.bfloat16, args.compile,
                      args.iters, args.repeats))


if __name__ == "__main__":
    main()
