"""Data loading: a whole image data set in memory as one ``(N, 3, H, W)`` uint8 tensor.

>>> from ditlab.data import load_image_data
>>> data = load_image_data("")          # the embedded CIFAR-10 sample (5,000 images)
>>> data.images.shape, data.num_classes
(torch.Size([5000, 3, 32, 32]), 10)

Sources: image folders and zips in ImageFolder layout, ``.npz`` arrays and ``torchvision:NAME``.
Mode conversion and the resize policy are documented in :mod:`ditlab.data.images`, the folder
layout in :mod:`ditlab.data.folder`.
"""
from ditlab.data.dataset import ImageData, load_image_data
from ditlab.data.embedded import embedded_sample_path
from ditlab.data.subset import evaluation_subset
from ditlab.data.images import (
    IMAGE_EXTENSIONS,
    MAX_ASPECT,
    MIN_SIDE,
    BadImageError,
    DataError,
    decode_image,
    to_rgb,
)

__all__ = [
    "evaluation_subset",
    "ImageData",
    "load_image_data",
    "DataError",
    "BadImageError",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "MAX_ASPECT",
    "decode_image",
    "to_rgb",
    "embedded_sample_path",
]
