"""Image generation task: a batch of images (+ labels) <-> one target stream named "image".

The task is the only place that knows pixels are uint8 in [0, 255] and the network sees [-1, 1].

With a context set (data.context_path) the model cross-attends to each image's set of token
embeddings. Its CFG dropout (task.cond_dropout) drops the context and the label *together*, because
the unconditional pass of guidance drops both: so that pass is the model trained on exactly those
samples. A row with no real token is given the learned null context as well (one meaning of "no
context" for the model, see ditlab.data.context_sets).

Named context sets (data.contexts, model.contexts): each its own cross-attention and null. task.cond_dropout
drops every set and the label together (the unconditional pass of --cfg); each named set is also dropped
alone with its model.contexts cfg_dropout (drawn after the one-set draws, so one-set runs keep their random
numbers), which trains the passes of --cfg-context NAME=W. The unnamed set's public name is "context"; it is never
dropped alone, so beside a label or a named set --cfg-context context=W is refused (check_cfg_context).

The helpers above the class (labels, pixel ranges, the images' .npz layout) serve every task whose
outputs are images (superres, lift).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ditlab.diffusion.guidance import drop_flags
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path
from ditlab.imageio import to_uint8
from ditlab.models.wrappers import unwrap_model
from ditlab.tasks.base import Conditions, SampleSettings, refuse_path
from ditlab.tasks.image.model import STREAM, model_num_classes

UNNAMED = "context"  # the public name (--cfg-context) of the unnamed set (data.context_path)


def named_keys(name: str) -> tuple[str, str]:
    """Batch / condition keys of the named context set ``name``: (embeddings, mask)."""
    return f"context__{name}", f"context_mask__{name}"


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def repeat_labels(labels: torch.Tensor, batch: int) -> torch.Tensor:
    """Guidance stacks the conditional and unconditional passes into one batch of k * B
    (diffusion.guidance.guided): repeat the labels to match; the drop flags pick the null ones."""
    return labels.repeat(batch // labels.shape[0])


def with_default_labels(indices: torch.Tensor, given: Conditions, num_classes: int) -> Conditions:
    """Balanced, batch-independent class labels: sample i gets class i mod num_classes unless given."""
    cond = dict(given)
    if num_classes and "labels" not in cond:
        cond["labels"] = indices % num_classes
    if not num_classes:
        cond.pop("labels", None)
    return cond


def image_npz_arrays(outputs: dict) -> dict[str, np.ndarray]:
    """``arr_0`` uint8 (N, H, W, C) and, for labelled samples, ``arr_1`` int64 (N,): the layout the
    common ADM / guided-diffusion FID evaluator reads (and ``ditlab fid``)."""
    arrays = {"arr_0": outputs["images"].permute(0, 2, 3, 1).contiguous().numpy()}
    if "labels" in outputs:
        arrays["arr_1"] = outputs["labels"].numpy().astype(np.int64)
    return arrays


def decoded_images(x: torch.Tensor, cond: Conditions) -> dict[str, torch.Tensor]:
    out = {"images": to_uint8(x)}
    if "labels" in cond:
        out["labels"] = cond["labels"]
    return out


def context_drop_flags(drop: torch.Tensor, context_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Samples that see the learned null context: the dropped ones and those with no real token (a mask of
    None: every token is real)."""
    return drop if context_mask is None else drop | ~context_mask.any(dim=1)


def repeat_context(context: torch.Tensor, mask: Optional[torch.Tensor], batch: int):
    """(embeddings (B, M, D), mask (B, M) or None) repeated to the k * B batch of guidance, like repeat_labels."""
    k = batch // context.shape[0]
    return context.repeat(k, 1, 1), None if mask is None else mask.repeat(k, 1)


def mask_unless_full(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """None for a mask with no padding, or none given (one host sync per set and sampling batch, outside the
    sampler's steps): the model then attends without a mask, as in training on a context file without
    padding (tasks/image/data.py). The decision is per batch of conditions, after ContextSet.rows trimmed
    their padding columns, so a batch of full rows from a padded file is mask-free too: the same
    mathematics, a different kernel (rounding-level differences)."""
    return None if mask is None or bool(mask.all()) else mask


class ImageTask:
    kind = "image"

    def __init__(self, model: torch.nn.Module, objective: Objective, label_dropout: float = 0.0,
                 context_dropout: float = 0.0, set_dropout: Optional[dict[str, float]] = None,
                 trained_set_dropout: Optional[dict[str, float]] = None):
        self.model = model
        self.objective = objective
        self.label_dropout = label_dropout
        self.context_dropout = context_dropout  # drops the context and the label together (module docstring)
        self.spec = unwrap_model(model).streams[0]
        self.num_classes = model_num_classes(model)
        self.context_dim = unwrap_model(model).context_dim  # None: no context set
        self.named_sets = list(unwrap_model(model).context_specs)  # named sets (data.contexts)
        self.set_dropout = {n: (set_dropout or {}).get(n, 0.0) for n in self.named_sets}
        # The run's own alone-drop probabilities (set_dropout is 0 outside training): what --cfg-context checks.
        given = set_dropout if trained_set_dropout is None else trained_set_dropout
        self.trained_set_dropout = {n: (given or {}).get(n, 0.0) for n in self.named_sets}

    @property
    def has_context(self) -> bool:
        return self.context_dim is not None or bool(self.named_sets)

    @property
    def context_sets(self) -> tuple[str, ...]:
        """Names of the context sets for --cfg-context."""
        return ((UNNAMED,) if self.context_dim is not None else ()) + tuple(self.named_sets)

    def check_cfg_context(self, name: str) -> None:
        """--cfg-context NAME=W needs the pass "NAME dropped alone, the rest kept" to be one the model was
        trained on. The unnamed set is dropped only together with the label and every named set
        (task.cond_dropout), so beside a label or a named set it cannot be guided alone: an error. A named
        set with cfg_dropout 0 was never dropped alone in this run's config (an earlier stage of
        train.init_from may have): a warning. Where the set is the only condition, alone = all."""
        others = bool(self.num_classes) or len(self.context_sets) > 1
        if not others:
            return
        if name == UNNAMED:
            raise ValueError(f"--cfg-context {UNNAMED}=W: this run drops its unnamed context set only together with "
                             "the label and the other sets (task.cond_dropout), so the pass that drops it alone was "
                             "never trained; guide on everything with --cfg W, or give the set as a named one "
                             "(data.contexts=[NAME=FILE]) with a model.contexts cfg_dropout > 0 and train again")
        if self.trained_set_dropout.get(name, 0.0) == 0.0:
            import warnings

            warnings.warn(f"--cfg-context {name}=W: this run's model.contexts gives the set {name!r} cfg_dropout 0, so "
                          "training never dropped it alone; the guidance term of that pass may be meaningless",
                          stacklevel=2)

    @property
    def patch_sizes(self) -> dict[str, int]:
        return {STREAM: self.spec.patch_size}

    @property
    def can_guide(self) -> bool:
        return self.num_classes > 0 or self.has_context

    # ---- training -------------------------------------------------------------------------------
    def training_loss(
        self,
        images: torch.Tensor,  # (B, C, H, W) float in [-1, 1]
        labels: Optional[torch.Tensor],
        label_drop: Optional[torch.Tensor],
        t: torch.Tensor,  # (B,) or (B, N) noise levels
        noise: torch.Tensor,
        loss_mask: Optional[torch.Tensor] = None,  # (B, N) bool
        context: Optional[torch.Tensor] = None,  # (B, M, D) with a context set
        context_mask: Optional[torch.Tensor] = None,  # (B, M) bool, True = real token; None: all real
        context_drop: Optional[torch.Tensor] = None,  # (B,) bool: the learned null context instead
        named: Optional[dict] = None,  # name -> (embeddings, mask, drop flags) of the named sets
    ) -> torch.Tensor:
        """Per-sample loss (B,)."""
        labels = labels if self.num_classes else None
        kwargs = {}
        if self.context_dim is not None:
            kwargs = dict(context=context, context_mask=context_mask, context_drop=context_drop)
        if named:
            kwargs["contexts"] = {n: (e, m) for n, (e, m, _) in named.items()}
            kwargs["context_drop"] = {"": context_drop, **{n: d for n, (_, _, d) in named.items()}}

        def net(x_t, t_):
            return self.model(x_t, t_, labels=labels, label_drop=label_drop if self.num_classes else None, **kwargs)

        mask = {STREAM: loss_mask} if loss_mask is not None else None
        return self.objective.loss(net, {STREAM: images}, {STREAM: t}, {STREAM: noise}, self.patch_sizes, mask)

    def loss_on_batch(self, images: torch.Tensor, labels: Optional[torch.Tensor],
                      context: Optional[torch.Tensor] = None, context_mask: Optional[torch.Tensor] = None,
                      **named_sets: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,) with noise levels, noise, label dropout and context dropout drawn from
        torch's global RNG (in this order, which resumed runs rely on). A context set's mask may be absent
        (a set without padding, tasks/image/data.py): every token is real."""
        expected = {key for name in self.named_sets for key in named_keys(name)}
        unknown = sorted(set(named_sets) - expected)
        if unknown:  # a misspelt mask key would otherwise pass for a set without padding
            raise ValueError(f"batch key(s) {unknown} name no context set of this model (its batch keys for named "
                             f"sets: {sorted(expected) or 'none'})")
        B = images.shape[0]
        t = self.objective.schedule.sample_time((B,), images.device)
        noise = torch.randn_like(images)
        label_drop = torch.rand(B, device=images.device) < self.label_dropout if self.num_classes else None
        context_drop = None
        if self.context_dim is not None:
            if context is None:
                raise ValueError(f"this model cross-attends to a context set: the batch needs context "
                                 f"(B, M, {self.context_dim}) (data.context_path) and, with padding, "
                                 "context_mask (B, M)")
            drop_both = torch.rand(B, device=images.device) < self.context_dropout
            if label_drop is not None:
                label_drop = label_drop | drop_both
            context_drop = context_drop_flags(drop_both, context_mask)
        named = None
        if self.named_sets:
            if self.context_dim is None:  # drawn here when there is no unnamed set (same order otherwise)
                drop_both = torch.rand(B, device=images.device) < self.context_dropout
                if label_drop is not None:
                    label_drop = label_drop | drop_both
            named = {}
            for name in self.named_sets:  # each set alone, after the one-set draws
                k, km = named_keys(name)
                if k not in named_sets:
                    raise ValueError(f"this model cross-attends to the context set {name!r}: the batch needs {k} "
                                     f"(and, with padding, {km})")
                alone = torch.rand(B, device=images.device) < self.set_dropout[name]
                m = named_sets.get(km)
                named[name] = (named_sets[k], m, context_drop_flags(drop_both | alone, m))
        return self.training_loss(images, labels, label_drop, t, noise, context=context, context_mask=context_mask,
                                  context_drop=context_drop, named=named)

    def preview_conditions(self, data, num: int) -> Conditions:
        """With a context set: the contexts (and labels) of the first training images."""
        if not self.has_context:
            return {}
        sets = ([data.context_set] if self.context_dim is not None else []) + [data.named_sets[n] for n in self.named_sets]
        return self.conditions_of(data, torch.arange(min(num, len(sets[0]))))

    def conditions_of(self, data, indices: torch.Tensor) -> Conditions:
        """The conditions of the data's images ``indices`` (CPU): every context set's rows (unnamed and
        named) and their labels; {} for a model without a context set. The training preview and the
        held-out metrics (FID on a context run) sample with these."""
        if not self.has_context:
            return {}
        cond = {}
        if self.context_dim is not None:
            rows = data.context_set.rows(indices)
            cond = {"context": rows.embeddings, "context_mask": rows.mask}
        for name in self.named_sets:
            rows = data.named_sets[name].rows(indices)
            k, km = named_keys(name)
            cond[k], cond[km] = rows.embeddings, rows.mask
        if self.num_classes:
            cond["labels"] = data.data.labels[indices]
        return cond

    def preview_figure(self, outputs: dict, conditions: Conditions):
        return outputs["images"], None

    # ---- generation -----------------------------------------------------------------------------
    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        if self.context_dim is not None and "context" not in given:
            raise ValueError(f"this model cross-attends to a context set of width {self.context_dim}: pass one "
                             "(ditlab sample --context FILE)")
        if self.context_dim is None and "context" in given:
            raise ValueError("a context set was given, but this model was trained without one")
        for name in self.named_sets:
            if named_keys(name)[0] not in given:
                raise ValueError(f"this model cross-attends to the context set {name!r}: pass one "
                                 f"(ditlab sample --context {name}=FILE)")
        return with_default_labels(indices, given, self.num_classes)

    def start(self, rng, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]:
        """Starting noise (per-sample RNG) and the time path of a sampler run."""
        refuse_path(settings, self.kind)
        spec = self.spec
        x = {STREAM: rng.randn(spec.channels, spec.size, spec.size)}
        return x, single_stream_path(STREAM, self.objective.schedule.time_grid(settings.steps))

    def denoiser(self, model: torch.nn.Module, cond: Conditions):
        """(x, t, drop) -> {name: (x0_hat, eps_hat)}; ``drop`` nulls the label and the context set
        together (see the module docstring)."""
        labels = cond.get("labels")
        context = None
        if self.context_dim is not None:
            context = (cond["context"].float(), mask_unless_full(cond.get("context_mask")))

        named = {n: (cond[named_keys(n)[0]].float(), mask_unless_full(cond.get(named_keys(n)[1])))
                 for n in self.named_sets}

        def denoise(x, t, drop):
            # drop: (B,) every condition, or a dict (ditlab.diffusion.guidance.drop_flags): "all", "context", NAME
            every = drop_flags(drop)
            B = every.shape[0]
            kwargs = {}
            if self.num_classes:
                kwargs = dict(labels=repeat_labels(labels, B), label_drop=every)
            if context is not None:
                embeddings, mask = repeat_context(*context, B)
                kwargs.update(context=embeddings, context_mask=mask,
                              context_drop=context_drop_flags(drop_flags(drop, UNNAMED), mask))
            if named:
                sets, drops = {}, {"": kwargs.get("context_drop")}
                for n, (e, m) in named.items():
                    e, m = repeat_context(e, m, B)
                    sets[n], drops[n] = (e, m), context_drop_flags(drop_flags(drop, n), m)
                kwargs.update(contexts=sets, context_drop=drops)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]:
        return decoded_images(streams[STREAM], cond)

    def npz_arrays(self, outputs: dict) -> dict[str, np.ndarray]:
        return image_npz_arrays(outputs)

    def sample_meta(self, settings: SampleSettings) -> dict:
        """Facts of these samples for ditlab_meta (tasks/base.py)."""
        return {}
