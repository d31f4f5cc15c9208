"""GPU probe behind tests/models/test_token_groups.py's gradient tolerance (eighteenth session, H100): the
gradients of the test's tiny two-stream model with the modulation spread from runs against the indexed gather
(token_groups.MAX_RUNS = 0), compiled and eager, bf16 autocast, each beside the fp32 gradient.
    PYTHONPATH=src python3 scripts/probe_runs_vs_gather_grads.py
Prints, per parameter shown: max |runs - gather|, max |runs - fp32|, max |gather - fp32| and max |fp32|."""
import sys

import torch

sys.path.insert(0, "tests/models")
import test_token_groups as T  # noqa: E402  (the test's own model and inputs)
from ditlab.models import token_groups  # noqa: E402

PARAMS = ("patch_embed.image.proj.bias", "patch_embed.image.proj.weight")


def grads(model, x, t, compiled: bool, bf16: bool = True) -> dict:
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = (torch.compile(model) if compiled else model)(x, t)["image"]
    (out.float() * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    model = T.tiny().cuda()
    x, t = T.inputs()
    x, t = {k: v.cuda() for k, v in x.items()}, {k: v.cuda() for k, v in t.items()}
    runs_default = token_groups.MAX_RUNS
    for compiled in (True, False):
        runs = grads(model, x, t, compiled)
        token_groups.MAX_RUNS = 0
        gather = grads(model, x, t, compiled)
        token_groups.MAX_RUNS = runs_default
        fp32 = grads(model, x, t, compiled, bf16=False)
        for n in PARAMS:
            print(f"compiled={compiled} {n}: runs-gather {(runs[n] - gather[n]).abs().max().item():.4g}, "
                  f"runs-fp32 {(runs[n] - fp32[n]).abs().max().item():.4g}, "
                  f"gather-fp32 {(gather[n] - fp32[n]).abs().max().item():.4g}, scale {fp32[n].abs().max().item():.4g}")


if __name__ == "__main__":
    main()
