"""Training batches of an in-memory image data set: uint8 on the device, gathered by index.

Shared by the image and super-resolution tasks. The whole data set moves to the device once, so
the step has no loader; a batch is a gather, the conversion to [-1, 1] and the optional flip.
"""
from __future__ import annotations

import torch

from ditlab.data import load_image_data
from ditlab.data.dataset import ImageData
from ditlab.tasks.image import to_model_range


class ImageTrainData:
    def __init__(self, data: ImageData, hflip: bool):
        _, channels, height, width = data.images.shape
        if height != width:
            raise ValueError(f"images of {data.source} are {height}x{width}; set data.image_size to train on square crops")
        self.data = data  # CPU copy: preview conditions, class names
        self.hflip = hflip
        self.images, self.labels = data.images, data.labels
        self.num_examples = len(data.images)
        self.info = {"image_size": height, "channels": channels, "class_names": data.class_names,
                     "data_source": data.source}

    def to(self, device: torch.device) -> "ImageTrainData":
        self.images, self.labels = self.data.images.to(device), self.data.labels.to(device)
        return self

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_model_range(self.images[idx])  # (B, C, H, W) in [-1, 1]
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return {"images": x, "labels": self.labels[idx]}


def load_image_train_data(cfg, progress: bool = True) -> ImageTrainData:
    """Read the configured data set and check it against the model's class count (before any GPU set-up)."""
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
    return ImageTrainData(data, cfg.data.hflip)
