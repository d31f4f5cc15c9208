"""Training batches of an in-memory image data set: uint8 on the device, gathered by index.

Shared by the image and super-resolution tasks. The whole data set moves to the device once, so
the step has no loader; a batch is a gather, the conversion to [-1, 1] and the optional flip.
With a context set (data.context_path, image task only) its rows, aligned to the images, live on the
device too and a batch gathers them with the same indices. Named context sets (data.contexts) likewise,
in batch keys ``context__NAME`` and ``context_mask__NAME`` (named_keys). A set with no padding in any row
(ContextSet.full) gives no mask key: the model then attends to it without a mask, which lets SDPA use its
mask-free (flash) kernels (ditlab.models.context_sets.drop_context keeps dropped rows mask-free too).
"""
from __future__ import annotations

from typing import Optional

import torch

from ditlab.data import load_image_data
from ditlab.data.context_sets import ContextSet, align_to_images, load_context_file
from ditlab.data.dataset import ImageData
from ditlab.tasks.image.task import named_keys, to_model_range


def context_files(cfg) -> list[tuple[str, str]]:
    """data.contexts as [(name, path)]: "name=path" strings or {name, path} mappings, checked against
    model.contexts (each file needs a set of that name, each set a file)."""
    out = []
    for entry in cfg.data.contexts:
        if isinstance(entry, str):
            name, sep, path = entry.partition("=")
            if not sep:
                raise ValueError(f"data.contexts: {entry!r} is not NAME=PATH (or a mapping with name and path)")
        else:
            name, path = entry.name, entry.path
        if not name.isidentifier() or name in ("all", "context"):
            raise ValueError(f"data.contexts: set name {name!r} must be a Python identifier other than 'all' "
                             "and 'context' (the unnamed set of data.context_path)")
        if not path:
            raise ValueError(f"data.contexts: set {name!r} has no path")
        if name in dict(out):
            raise ValueError(f"data.contexts: set {name!r} given twice")
        out.append((name, path))
    sets = [cs.name for cs in cfg.model.contexts]
    for name in sets:
        if name not in dict(out):
            raise ValueError(f"model.contexts names the set {name!r}, but data.contexts gives it no file")
    return out


def _tensors(cs: ContextSet, device=None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(embeddings, mask) of a context set, on ``device`` if given; the mask None for a set without padding."""
    emb, mask = cs.embeddings, None if cs.full else cs.mask
    if device is not None:
        emb, mask = emb.to(device), None if mask is None else mask.to(device)
    return emb, mask


class ImageTrainData:
    def __init__(self, data: ImageData, hflip: bool, context: Optional[ContextSet] = None,
                 named: Optional[dict[str, ContextSet]] = None):
        _, channels, height, width = data.images.shape
        if height != width:
            raise ValueError(f"images of {data.source} are {height}x{width}; set data.image_size to train on square crops")
        self.data = data  # CPU copy: preview conditions, class names
        self.hflip = hflip
        self.images, self.labels = data.images, data.labels
        self.num_examples = len(data.images)
        self.info = {"image_size": height, "channels": channels, "class_names": data.class_names,
                     "data_source": data.source}
        self.context_set = context  # CPU copy, row i = image i: the preview's contexts
        self.context = self.context_mask = None
        if context is not None:
            if len(context) != self.num_examples:
                raise ValueError(f"context set {context.source} has {len(context)} rows for {self.num_examples} "
                                 "images; align it with ditlab.data.context_sets.align_to_images")
            self.context, self.context_mask = _tensors(context)
            self.info.update(context_dim=context.dim, context_source=context.source)
        self.named_sets = dict(named or {})  # CPU copies, row i = image i
        self.named = {}  # name -> (embeddings, mask) on the device
        for name, cs in self.named_sets.items():
            if len(cs) != self.num_examples:
                raise ValueError(f"context set {name!r} ({cs.source}) has {len(cs)} rows for {self.num_examples} images")
            self.named[name] = _tensors(cs)
        if self.named_sets:
            self.info.update(contexts={n: cs.dim for n, cs in self.named_sets.items()},
                             contexts_source={n: cs.source for n, cs in self.named_sets.items()})

    def to(self, device: torch.device) -> "ImageTrainData":
        self.images, self.labels = self.data.images.to(device), self.data.labels.to(device)
        if self.context_set is not None:
            self.context, self.context_mask = _tensors(self.context_set, device)
        self.named = {n: _tensors(cs, device) for n, cs in self.named_sets.items()}
        return self

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_model_range(self.images[idx])  # (B, C, H, W) in [-1, 1]
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = {"images": x, "labels": self.labels[idx]}
        if self.context is not None:  # a device gather like the images': no host sync
            out["context"] = self.context[idx].float()
            if self.context_mask is not None:
                out["context_mask"] = self.context_mask[idx]
        for name, (emb, mask) in self.named.items():
            k, km = named_keys(name)
            out[k] = emb[idx].float()
            if mask is not None:
                out[km] = mask[idx]
        return out


def load_image_train_data(cfg, progress: bool = True, allow_context: bool = False) -> ImageTrainData:
    """Read the configured data set and check it against the model's class count (before any GPU set-up).

    ``allow_context``: the task kind cross-attends to a context set, so data.context_path may be set.
    """
    context = None
    if cfg.data.context_path:
        if not allow_context:
            raise ValueError(f"data.context_path is set, but task.kind={cfg.task.kind} does not cross-attend to "
                             "a context set (task.kind=image does)")
        context = load_context_file(cfg.data.context_path)  # checked before the (slow) image decoding
    files = context_files(cfg) if (cfg.data.contexts or cfg.model.contexts) else []
    if files and not allow_context:
        raise ValueError(f"data.contexts is set, but task.kind={cfg.task.kind} does not cross-attend to context "
                         "sets (task.kind=image does)")
    named = {name: load_context_file(path) for name, path in files}
    data = load_image_data(cfg.data.path, cfg.data.image_size, cfg.data.on_bad_image, cfg.data.root,
                           progress=progress)
    n = cfg.model.num_classes
    if n and not cfg.data.use_labels:
        raise ValueError("model.num_classes > 0 needs data.use_labels=true")
    if n and data.num_classes == 0:
        raise ValueError(f"model.num_classes={n} but the data set {data.source} has no labels "
                         "(no class folders); set model.num_classes=0")
    if n and data.num_classes > n:
        raise ValueError(f"the data set has {data.num_classes} classes but model.num_classes={n}")
    if context is not None:
        context = align_to_images(context, data.names, data.source)
    named = {name: align_to_images(cs, data.names, data.source) for name, cs in named.items()}
    return ImageTrainData(data, cfg.data.hflip, context, named)
