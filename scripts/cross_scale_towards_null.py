"""The CPU check of cross's --cond-scale zero point (eighteenth session, BENCHMARKS.md "Issue 16's acceptance"):
runs a `ditlab` command with task.cond_injection=cross's W interpolating towards the null context's output,
null + W (out - null) (W = 0: guidance's unconditional prediction), instead of scaling the cross-attention output
towards zero as shipped. An experiment, not an option: it patches ConditionedDiT._block_step for this process.
    PYTHONPATH=src python3 scripts/cross_scale_towards_null.py diagnose collapse RUN --data TEST_ZIP \\
        --cfg 1 2 --cond-scale 1 0.8 0.5 0 --device cpu --out RUN/diagnose_null"""
import sys

import torch

from ditlab import cli
from ditlab.models.control import ConditionedDiT

shipped = ConditionedDiT._block_step


def towards_null(self, i, block, h, c, index, mask, rope, context, context_mask, **kw):
    st = self._pathway
    if st is None or st.get("cross_scale") is None or not getattr(block, "has_cross", False):
        return shipped(self, i, block, h, c, index, mask, rope, context, context_mask, **kw)
    scale, null = st["cross_scale"], self.null_context

    def hook(mod, args, kwargs, out):
        q = args[0]  # mod.forward, not mod(...): the hook must not run on its own call
        null_out = mod.forward(q, context=null.to(q.dtype).expand(q.shape[0], 1, -1), mask=None)
        w = scale.to(out.dtype) if torch.is_tensor(scale) else scale
        return null_out + w * (out - null_out)

    handle = block.cross_attn.register_forward_hook(hook, with_kwargs=True)
    self._pathway = {k: v for k, v in st.items() if k != "cross_scale"}  # the shipped hook stays off
    try:
        return shipped(self, i, block, h, c, index, mask, rope, context, context_mask, **kw)
    finally:
        handle.remove()
        self._pathway = st


if __name__ == "__main__":
    ConditionedDiT._block_step = towards_null
    sys.exit(cli.main(sys.argv[1:]))
