"""Two-stage training: start a model from another run's weights.

What the loaded model lacks starts so that the new model behaves as the loaded one at step 0 and
every new part still learns from step one:

- a new condition stream's patch embedding, its learned null and a new output head: zero (one
  linear layer each: its gradient does not need the others to be non-zero);
- a new cross-attention pathway (the loaded model had no context set): its attention keeps the
  fresh initialisation, and the block's adaLN grows from 6 to 9 chunks with the old 6 copied and the
  new 3 (shift, scale, gate of the cross-attention) zero. The zero *gate* silences the pathway while
  the gate itself gets a gradient (from the random pathway's output); zeroing the pathway's weights
  as well would leave gate and weights with zero gradient for ever.
- a condition pathway of ditlab.models.control (task.cond_injection cross / branch / adaln /
  tokens_gated): the
  condition's patch embedding (``cond_embed``, ``cond_pool``) keeps its fresh initialisation behind
  the zero gate / zero last layer / zero linears (``branch_out``); the ControlNet branch
  (``branch_blocks.N``) starts as a copy of the loaded main blocks ``blocks.N`` (fresh where the loaded
  block does not fit); tokens_gated: the condition's patch embedding keeps its fresh initialisation
  (the model's ``fresh_at_init_from``) and its ``token_gates`` start at zero; from a run that already
  read the condition tokens (a ``tokens`` run) the gates start at one instead (``after_init_from``). So
  the model's output at step 0 is the loaded model's (for tokens_gated from a tokens run with
  task.cond_blocks other than all: except that the blocks outside no longer see the condition).
"""
from __future__ import annotations

import torch

from ditlab.models.wrappers import unwrap_model
from ditlab.train.checkpoint import load_weights

# Missing parameters under these names keep their fresh initialisation (see the module docstring).
_FRESH_INIT = (".cross_attn.", ".norm_cross.", "null_context", ".cond_embed.", ".cond_pool.", ".branch_out.",
               ".branch_blocks.", ".cross_sets.")  # .cross_sets.: a new named context set (its adaLN starts zero)


def _widened_adaln(name: str, loaded: torch.Tensor, own: torch.Tensor) -> bool:
    """A block's adaLN that gained chunks (6 -> 9 with cross-attention): the old rows lead."""
    return (name.endswith(("adaLN.weight", "adaLN.bias")) and loaded.dim() == own.dim()
            and loaded.shape[1:] == own.shape[1:] and loaded.shape[0] < own.shape[0])


def init_from(model: torch.nn.Module, source: str, which: str = "ema") -> dict:
    """Load matching weights from another run; start what it lacks as described above; report it."""
    weights = load_weights(source, which=which)
    own = model.state_dict()
    widened = {k for k, v in weights.items() if k in own and v.shape != own[k].shape
               and _widened_adaln(k, v, own[k])}
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items()
                  if k in own and v.shape != own[k].shape and k not in widened}
    if mismatched:
        listing = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in mismatched.items())
        raise ValueError(f"train.init_from={source}: shapes differ for {listing}")
    missing, unexpected = model.load_state_dict({k: v for k, v in weights.items() if k not in widened},
                                                strict=False)
    missing = [k for k in missing if k not in widened]
    params = dict(model.named_parameters())
    keep_fresh = tuple(getattr(unwrap_model(model), "fresh_at_init_from", ()))  # the model's own gated parts
    fresh, zeroed, copied = [], [], []
    with torch.no_grad():
        for name in list(missing):  # the ControlNet branch: a trainable copy of the loaded main blocks
            if name.startswith("branch_blocks.") and name in params:
                src = "blocks." + name.removeprefix("branch_blocks.")
                if src in weights and weights[src].shape == params[name].shape:
                    params[name].copy_(weights[src].to(params[name].dtype))
                    copied.append(name)
        missing = [k for k in missing if k not in copied]
        for name in widened:
            p, old = params[name], weights[name].to(params[name].dtype)
            p.zero_()
            p[: old.shape[0]] = old
        for name in missing:
            if name not in params:
                continue  # a buffer: built from the config
            if any(tag in f".{name}" for tag in _FRESH_INIT) or name.startswith(keep_fresh):
                fresh.append(name)
            else:
                params[name].zero_()
                zeroed.append(name)
    print(f"ditlab: initialised from {source} ({which} weights): {len(weights) - len(unexpected)} tensors loaded"
          f"{f'; widened (old rows kept, new rows zero): {sorted(widened)}' if widened else ''}; "
          f"new, zero-initialised: {sorted(zeroed) or 'none'}"
          f"{f'; new, freshly initialised behind a zero gate: {sorted(fresh)}' if fresh else ''}"
          f"{f'; branch copied from the main blocks: {len(copied)} tensors' if copied else ''}; "
          f"not used: {sorted(unexpected) or 'none'}", flush=True)
    report = {"missing": sorted(missing), "unexpected": sorted(unexpected), "widened": sorted(widened),
              "fresh": sorted(fresh)}
    if copied:
        report["copied"] = sorted(copied)
    # The model's own last step (e.g. tokens_gated opening its gates when the loaded run already read the
    # condition tokens), given the names that were loaded.
    after = getattr(unwrap_model(model), "after_init_from", None)
    note = after(set(weights) - set(unexpected)) if after is not None else None
    if note:
        print(f"ditlab: {note}", flush=True)
        report["note"] = note
    return report
