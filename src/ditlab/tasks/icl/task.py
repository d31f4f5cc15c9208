"""In-context regression task (user note 003): prompts <-> the x / clean-y / noised-y token streams.

Two tasks share the tokens and the prefix mask of :mod:`ditlab.tasks.icl.layout`:

- :class:`ICLDiffusionTask` noises every query y and trains the objective on the queries only. The
  queries never see each other, so each is an independent training example; they share their
  prompt's noise level, which keeps the per-token adaLN at one modulation per stream (a level per
  query token cost ~40% more per step on the CPU). Sampling generates all queries of a prompt at
  once, many samples per prompt.
- :class:`ICLRegressionTask` is the deterministic baseline of the same size: the query tokens carry
  y = 0 at noise level 1 (a fixed "unknown" marker) and the network's output is the prediction of y,
  trained with the squared error.

Everything here is in network units (see :mod:`ditlab.tasks.icl.data`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path, with_fixed_streams
from ditlab.models.wrappers import unwrap_model
from ditlab.tasks.base import Conditions, SampleSettings, refuse_path
from ditlab.tasks.icl.layout import X, Y_CTX, Y_QUERY, prefix_attention_mask

PATCH_SIZES = {X: 1, Y_CTX: 1, Y_QUERY: 1}


class _ICLTaskBase:
    kind = "icl"

    def __init__(self, model: torch.nn.Module, objective: Objective):
        self.model = model
        self.objective = objective
        streams = unwrap_model(model).streams
        self.d, self.n_points = streams[0].channels, streams[0].size
        self._mask: dict[torch.device, torch.Tensor] = {}
        # Built now, on the model's device: filling the cache inside the compiled step would recompile it.
        self.mask(next(model.parameters()).device)

    def mask(self, device) -> torch.Tensor:
        """The (3N, 3N) prefix mask on ``device``, built once per device (outside compiled code)."""
        device = torch.device(device)
        if device not in self._mask:
            self._mask[device] = prefix_attention_mask(self.n_points, device)
        return self._mask[device]

    def forward(self, model, x: torch.Tensor, y_ctx: torch.Tensor, y_query: torch.Tensor,
                t_query: torch.Tensor) -> torch.Tensor:
        """Network output for the query tokens, (B, N). x: (B, N, d); y_*: (B, N); t_query: (B,) or (B, N)."""
        B = x.shape[0]
        zeros = torch.zeros(B, device=x.device)
        out = model({X: x, Y_CTX: y_ctx[..., None], Y_QUERY: y_query[..., None]},
                    {X: zeros, Y_CTX: zeros, Y_QUERY: t_query}, attn_mask=self.mask(x.device))
        return out[Y_QUERY][..., 0]

    can_guide = False  # nothing to drop: the context is the prompt itself

    def preview_conditions(self, data, num: int):
        return None  # nothing to draw during training; `ditlab icl eval` plots the evaluation


class ICLDiffusionTask(_ICLTaskBase):
    def loss_on_batch(self, x: torch.Tensor, y: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        """Per-prompt loss (B,): the objective on the noised query tokens of the active points."""
        B = y.shape[0]
        t = self.objective.schedule.sample_time((B,), y.device)  # one level per prompt (module docstring)
        noise = torch.randn_like(y)
        x0 = {X: x, Y_CTX: y[..., None], Y_QUERY: y[..., None]}
        zeros = torch.zeros(B, device=y.device)
        times = {X: zeros, Y_CTX: zeros, Y_QUERY: t}
        noises = {X: torch.zeros_like(x), Y_CTX: torch.zeros_like(y[..., None]), Y_QUERY: noise[..., None]}
        mask = self.mask(y.device)

        def net(x_t, t_):
            # The clean copies stay clean: their t is 0, so noised() left them as they were.
            return self.model(x_t, t_, attn_mask=mask)

        return self.objective.loss(net, x0, times, noises, PATCH_SIZES, loss_mask={Y_QUERY: point_mask})

    # ---- generation: conditions are prompts {"x": (B, N, d), "y": (B, N)} in network units --------
    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        if "x" not in given or "y" not in given:
            raise ValueError("in-context regression samples need prompts: conditions 'x' (B, N, d) and 'y' (B, N)")
        return given

    def start(self, rng, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]:
        """The prompt's clean context (x and clean-y tokens at level 0) and noise for every query y;
        all N queries of a prompt are generated together (the mask keeps them independent)."""
        refuse_path(settings, "icl")
        x, y = cond["x"], cond["y"][..., None]
        path = with_fixed_streams(single_stream_path(Y_QUERY, self.objective.schedule.time_grid(settings.steps)),
                                  {X: 0.0, Y_CTX: 0.0})
        return {X: x, Y_CTX: y, Y_QUERY: rng.randn(self.n_points, 1)}, path

    def denoiser(self, model: torch.nn.Module, cond: Conditions):
        """The clean context of the batch runs through the network once (prefix caching, see
        :class:`ICLDenoiser`); every step then runs the query tokens only. ``drop`` is ignored."""
        cached = ICLDenoiser(model, self.objective, self.mask).with_prefix(cond["x"], cond["y"][..., None])
        return lambda x, t, drop: cached(x, t)

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]:
        return {"x": cond["x"], "y": cond["y"], "y_sampled": streams[Y_QUERY][..., 0]}

    def npz_arrays(self, outputs: dict) -> dict[str, np.ndarray]:
        """``x`` (N, n_points, d), ``y`` (N, n_points) the prompt's own y values, ``y_sampled`` (N,
        n_points): query i's draw given the i - 1 earlier pairs and x_i; all in network units."""
        return {k: outputs[k].numpy() for k in ("x", "y", "y_sampled")}

    def sample_meta(self, settings: SampleSettings) -> dict:
        """Facts of these samples for ditlab_meta (tasks/base.py)."""
        return {}


class ICLDenoiser:
    """The samplers' denoiser of an ICL model: ``denoiser(x, t)``.

    ``with_prefix(x, y)`` returns the same function for one batch of prompts whose clean context
    (the x and clean-y tokens, noise level 0) is run through the network once and cached per block
    (DiT.prefix_cache): every sampler step then runs only the N query tokens against the cached
    keys and values, about a third of the work of the 3N-token forward.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, mask: Callable):
        self.model, self.objective, self.mask = model, objective, mask

    def __call__(self, x: dict, t: dict) -> dict:
        return self.objective.denoised(self.model(x, t, attn_mask=self.mask(x[X].device)), x, t, PATCH_SIZES)

    def with_prefix(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[dict, dict], dict]:
        """x: (B, N, d), y: (B, N, 1), the context of every row of the batch the sampler will draw."""
        dit = unwrap_model(self.model)
        mask = self.mask(x.device)
        zeros = torch.zeros(x.shape[0], device=x.device)
        cache = dit.prefix_cache({X: x, Y_CTX: y, Y_QUERY: torch.zeros_like(y)}, {X: zeros, Y_CTX: zeros, Y_QUERY: zeros},
                                 attn_mask=mask)

        def denoise(xs, t):
            out = dit.forward_with_prefix(cache, xs, t, attn_mask=mask)
            return self.objective.denoised(out, xs, t, PATCH_SIZES)

        return denoise


class ICLRegressionTask(_ICLTaskBase):
    def loss_on_batch(self, x: torch.Tensor, y: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        """Per-prompt mean squared error (B,) of the predictions on the active points."""
        pred = self.predict(self.model, x, y)
        weight = point_mask.float()
        return ((pred.float() - y) ** 2 * weight).sum(1) / weight.sum(1).clamp(min=1.0)

    def predict(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Prediction (B, N) of every y_i from its prefix (the clean y tokens are the context)."""
        return self.forward(model, x, y, torch.zeros_like(y), torch.ones(y.shape[0], device=y.device))

    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        raise ValueError("this run is the deterministic baseline (icl.objective=mse): it predicts y, it does not "
                         "sample; evaluate it with `ditlab icl eval RUN` (or as --baseline)")


def build_icl_task(cfg, model, objective: Objective, training: bool = True):
    if cfg.icl.objective == "mse":
        return ICLRegressionTask(model, objective)
    return ICLDiffusionTask(model, objective)
