"""Optimizer and learning-rate schedule, built from OptimConfig."""
from __future__ import annotations

import math

import torch

from ditlab.train.muon import BatchedMuon


def build_optimizer(model: torch.nn.Module, optim_cfg, device: torch.device):
    """optim.name adamw: one AdamW over every trainable parameter. muon: :class:`MuonAdamW` (Muon for the blocks'
    matrices, :func:`muon_parameters`, batched per shape: ditlab.train.muon; AdamW for the rest)."""
    if getattr(optim_cfg, "name", "adamw") == "muon":
        matrices = muon_matrices(model)
        hidden = [w for w, _ in matrices]
        ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        # optim.muon_split: each map of a stacked layer (q, k, v; the adaLN chunks; gate and value) on its own
        parts = {w: k for w, k in matrices if k > 1} if getattr(optim_cfg, "muon_split", False) else None
        muon_lr = getattr(optim_cfg, "muon_lr", None)
        ratio = 1.0 if muon_lr is None else muon_lr / optim_cfg.lr  # optim.muon_lr: the schedule keeps the ratio
        muon = BatchedMuon(hidden, lr=optim_cfg.lr * ratio, weight_decay=optim_cfg.weight_decay,
                           momentum=optim_cfg.muon_momentum, adjust_lr_fn=optim_cfg.muon_adjust_lr,
                           compile=getattr(optim_cfg, "muon_compile", "off"), parts=parts)
        return MuonAdamW(muon, _adamw(rest, optim_cfg, device), muon_lr_ratio=ratio)
    return _adamw([p for p in model.parameters() if p.requires_grad], optim_cfg, device)


def _adamw(params: list, optim_cfg, device: torch.device) -> torch.optim.AdamW:
    # Fused AdamW runs the whole update in a few kernels on the GPU; the CPU has no fused version
    # before torch 2.4 and it gives no gain there, so the CPU uses the foreach path.
    fused = optim_cfg.fused and device.type == "cuda"
    return torch.optim.AdamW(
        params,
        # A device tensor lr lets warm-up change it without a host sync or a recompilation.
        lr=torch.tensor(optim_cfg.lr, device=device) if fused else optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        fused=fused,
        foreach=None if fused else True,
    )


def muon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters optim.name=muon gives to Muon: the weight matrices of the linear layers inside the
    transformer blocks (attention, cross-attention, MLP, adaLN modulation; a ControlNet branch's blocks too),
    the "hidden" matrices of the Muon recipe. Embeddings, the timestep / label MLPs, final layers, biases and
    learned tokens stay with AdamW."""
    return [w for w, _ in muon_matrices(model)]


def muon_matrices(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, int]]:
    """:func:`muon_parameters`, each with the number of maps its layer stacks (ditlab.models.stacked: 3 for
    q, k, v, the adaLN modulation's chunk count, 2 for SwiGLU's gate and value; 1 for a plain layer)."""
    from ditlab.models.blocks import CrossSet, DiTBlock
    from ditlab.models.stacked import output_parts

    seen, out = set(), []
    for block in model.modules():
        if isinstance(block, (DiTBlock, CrossSet)):
            for layer in block.modules():
                w = getattr(layer, "weight", None)
                if (isinstance(layer, torch.nn.Linear) and w is not None and w.requires_grad and w.ndim == 2
                        and id(w) not in seen):
                    seen.add(id(w))
                    out.append((w, output_parts(layer)))
    if not out:
        raise ValueError("optim.name=muon: this model has no transformer block with linear layers for Muon")
    return out


class MuonAdamW:
    """Muon and AdamW stepped together, as one optimizer for the trainer: ``param_groups`` lists both parts' groups
    (so set_lr reaches both: Muon's at ``muon_lr_ratio`` times the scheduled lr, optim.muon_lr / optim.lr),
    ``state_dict`` holds both parts by name, ``found_inf`` (the sync-free non-finite guard) reaches both. Not a
    torch.optim.Optimizer: fp16's GradScaler, which steps a single torch optimizer, is refused with it
    (ditlab.config)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer, muon_lr_ratio: float = 1.0):
        self.parts = {"muon": muon, "adamw": adamw}
        self.muon_lr_ratio = muon_lr_ratio

    def set_lr(self, lr: float) -> None:
        """The scheduled lr (optim.lr's) for AdamW's groups, times ``muon_lr_ratio`` for Muon's."""
        set_lr(self.parts["adamw"], lr)
        set_lr(self.parts["muon"], lr * self.muon_lr_ratio)

    @property
    def found_inf(self):
        return self.parts["muon"].found_inf

    @found_inf.setter
    def found_inf(self, value) -> None:
        for part in self.parts.values():  # fused AdamW and BatchedMuon skip their update where it is 1
            part.found_inf = value

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts.values() for g in part.param_groups]

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": {name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Each part from its own entry (ditlab.train.checkpoint loads the parts one by one, keeping each loading
        optimizer's implementation settings; this is the plain form)."""
        for name, part in self.parts.items():
            part.load_state_dict(part_state(state, name))


def part_state(state: dict, name: str) -> dict:
    """One part's state of a MuonAdamW state dict; a KeyError that says what the file holds instead."""
    parts = state.get("parts") if isinstance(state, dict) else None
    if not isinstance(parts, dict) or name not in parts:
        held = "a single optimizer's state (optim.name=adamw)" if isinstance(state, dict) and "param_groups" in state \
            else f"parts {sorted(parts) if isinstance(parts, dict) else []}"
        raise KeyError(f"optim.name=muon needs the {name!r} part of a Muon + AdamW state; the file holds {held}")
    return parts[name]


def lr_at(step: int, optim_cfg, progress: float = 0.0) -> float:
    """Linear warm-up to optim.lr over optim.warmup_steps, then constant or decaying with ``progress``
    (the fraction of the run done, in [0, 1])."""
    if optim_cfg.warmup_steps > 0 and step < optim_cfg.warmup_steps:
        return optim_cfg.lr * (step + 1) / optim_cfg.warmup_steps
    if optim_cfg.decay == "constant":
        return optim_cfg.lr
    p = min(max(progress, 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * p)) if optim_cfg.decay == "cosine" else 1 - p
    return optim_cfg.lr * (optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` (a device tensor lr is filled in place); an optimizer with its own
    ``set_lr`` (MuonAdamW: optim.muon_lr) spreads it over its parts."""
    if not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "set_lr"):
        optimizer.set_lr(lr)
        return
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
