"""Muon with its Newton-Schulz iterations batched over the matrices of one shape (optim.name=muon).

The mathematics is torch.optim.Muon's (torch >= 2.9), step for step:
    B <- lerp(B, g, 1 - momentum)                      the momentum buffer
    U <- lerp(g, B, momentum)  (nesterov)  or  B
    O <- NS5(U): U / ||U||_F in bf16, then ns_steps quintic Newton-Schulz iterations (on U^T when it is tall)
    p <- p * (1 - lr * weight_decay) - adjust(lr, shape) * O
torch's implementation walks the matrices one by one in Python: five iterations of three matmuls each, per
matrix. At DiT-S/2 (60 matrices of 5 shapes) that is 1,754 aten ops, i.e. kernel launches, a step, against a ~35
ms GPU step. The blocks of a DiT hold a handful of matrix shapes, so here each shape's matrices are stacked and
iterated together with batched matmuls: 298 ops a step (scripts/bench_muon.py, BENCHMARKS.md).

``parts`` (optim.muon_split) names the parameters that stack several maps by output rows (attention's q, k, v;
the adaLN modulation's chunks: ditlab.models.stacked): each map is then a matrix of its own, orthogonalised and
lr-scaled by its own shape, batched with every other matrix of that shape. Without it a fused matrix is one
matrix, as torch.optim.Muon sees it.

It also honours ``found_inf`` as fused AdamW does: set to a one-element tensor (the trainer's sync-free
non-finite guard), a 1 makes the step a no-op on the device without a host sync. The gradient is zeroed before
it reaches the buffer (so a NaN cannot), the buffer's update and the parameter's are multiplied by 0.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's (Keller Jordan's quintic)
ADJUST_LR = ("match_rms_adamw", "original")


def adjusted_lr(lr: float, shape, adjust_lr_fn: str) -> float:
    """torch.optim.Muon's learning-rate scale for a (A, B) matrix: 0.2 sqrt(max(A, B)) (match_rms_adamw,
    Moonshot's: an AdamW lr carries over) or sqrt(max(1, A / B)) (original)."""
    A, B = shape[:2]
    return lr * (0.2 * math.sqrt(max(A, B)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1, A / B)))


def newton_schulz(U: torch.Tensor, steps: int, eps: float,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """The orthogonalised update of each matrix of a (n, A, B) stack, in bf16."""
    a, b, c = coefficients
    X = U.bfloat16()
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    return X.mT if tall else X


def momentum_and_update(G: torch.Tensor, B: torch.Tensor, momentum: float, nesterov: bool, ns_steps: int,
                        eps: float, bad: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One shape's stacked gradients G and momentum buffers B -> (the new buffers, the orthogonalised update in
    bf16). ``bad`` (a 0-d bool tensor): a skipped step, on the device: the buffers come back unchanged and the
    update is zero, and the gradient is zeroed first (NaN-safe: not 0 * NaN). A pure function, so that it can be
    compiled (BatchedMuon's ``compile``)."""
    keep = None
    if bad is not None:
        G = torch.where(bad, torch.zeros((), dtype=G.dtype, device=G.device), G)
        keep = (~bad).to(B.dtype)
    B = B.lerp(G, (1 - momentum) if keep is None else (1 - momentum) * keep)  # weight 0 on a skipped step
    U = G.lerp(B, momentum) if nesterov else B
    O = newton_schulz(U, ns_steps, eps)
    if keep is not None:
        O = O * keep.to(O.dtype)
    return B, O


COMPILE_MODES = ("off", "default", "reduce-overhead")


class BatchedMuon(torch.optim.Optimizer):
    """torch.optim.Muon's update for 2-D parameters, batched per shape; ``found_inf`` skips a step on the device.
    ``compile``: "off", or a torch.compile mode for :func:`momentum_and_update` (one graph per matrix shape; the
    stacking and the in-place parameter update stay eager): fewer, fused kernels for the ~300 small ones a step
    launches at DiT-S/2 (scripts/bench_muon.py times each). Each shape is a recompilation of that one function:
    past Dynamo's recompile limit (8; DiT-S/2 has 5 shapes) the remaining shapes run eagerly, with its warning."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7, adjust_lr_fn: str = "match_rms_adamw",
                 compile: str = "off", parts: Optional[dict] = None):
        if adjust_lr_fn not in ADJUST_LR:
            raise ValueError(f"adjust_lr_fn must be one of {', '.join(ADJUST_LR)}, got {adjust_lr_fn!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self._update = (momentum_and_update if compile == "off" else
                        torch.compile(momentum_and_update, mode=compile, dynamic=False))
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, eps=eps, adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon trains 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
        # id(parameter) -> how many maps it stacks by rows (a parameter not named: 1); not in the state dict: the
        # model's structure and optim.muon_split give it again on resume
        self._parts: dict[int, int] = {}
        named = {id(p) for group in self.param_groups for p in group["params"]}
        for p, k in (parts or {}).items():
            if id(p) not in named:
                raise ValueError(f"parts names a parameter of shape {tuple(p.shape)} that this optimizer does not "
                                 "train")
            if not isinstance(k, int) or k < 1 or p.shape[0] % k:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} cannot hold {k} maps stacked by rows")
            self._parts[id(p)] = k
        self.found_inf: Optional[torch.Tensor] = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = self.found_inf
        for group in self.param_groups:
            by_shape: dict[tuple, list[torch.Tensor]] = {}  # the shape of one map -> the parameters of such maps
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((p.shape[0] // self._parts.get(id(p), 1), p.shape[1]), []).append(p)
            for shape, params in by_shape.items():
                self._step_shape(group, shape, params, skip)
        return loss

    def _step_shape(self, group: dict, shape: tuple, params: list[torch.Tensor], skip: Optional[torch.Tensor]):
        """The step of every map of shape ``shape`` in ``params`` (a parameter's maps: its (k, A, B) view; k = 1
        for a plain matrix, so that the stack is torch.stack of the parameters, as before optim.muon_split)."""
        lr, mu = float(group["lr"]), group["momentum"]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])

        def maps(tensors: list[torch.Tensor]) -> list[torch.Tensor]:  # views: writing one writes its parameter
            return [m for t in tensors for m in t.view(-1, *shape).unbind(0)]

        G = torch.stack([m for p in params for m in p.grad.reshape(-1, *shape).unbind(0)])
        buf_maps = maps(bufs)
        B = torch.stack(buf_maps)
        bad = skip.reshape(()).to(torch.bool) if skip is not None else None
        B, O = self._update(G, B, mu, group["nesterov"], group["ns_steps"], group["eps"], bad)
        torch._foreach_copy_(buf_maps, list(B.unbind(0)))
        O = O.to(params[0].dtype)
        decay = 1 - lr * group["weight_decay"]
        if bad is not None:
            decay = 1 - lr * group["weight_decay"] * (~bad).to(B.dtype)  # a 0-d tensor: 1 on a skipped step
        if not (isinstance(decay, float) and decay == 1.0):
            torch._foreach_mul_(params, decay)
        torch._foreach_add_(maps(params), list(O.unbind(0)), alpha=-adjusted_lr(lr, shape, group["adjust_lr_fn"]))
