"""Two-stage training: start a model from another run's weights."""
from __future__ import annotations

import torch

from ditlab.train.checkpoint import load_weights


def init_from(model: torch.nn.Module, source: str, which: str = "ema") -> dict:
    """Load matching weights from another run; zero the parameters it lacks; report both key lists."""
    weights = load_weights(source, which=which)
    own = model.state_dict()
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items()
                  if k in own and v.shape != own[k].shape}
    if mismatched:
        listing = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in mismatched.items())
        raise ValueError(f"train.init_from={source}: shapes differ for {listing}")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in missing:
                p.zero_()  # a new pathway starts silent: the loaded model's behaviour is the starting point
    print(f"ditlab: initialised from {source} ({which} weights): {len(weights) - len(unexpected)} tensors loaded; "
          f"new, zero-initialised: {sorted(missing) or 'none'}; not used: {sorted(unexpected) or 'none'}", flush=True)
    return {"missing": sorted(missing), "unexpected": sorted(unexpected)}
