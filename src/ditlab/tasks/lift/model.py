"""The LIFT network: a low-resolution stream and the full-resolution image stream, both predicted."""
from __future__ import annotations

from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch

HI, LO = "image", "lowres"  # HI is the image stream's name, as in the image task
ERRORS_FILE = "lift_errors.npz"  # per-node errors of a run, for the dp-* paths (ditlab lift errors)


def lift_streams(image_size: int, channels: int, arch: str, factor: int) -> list[StreamSpec]:
    _, _, _, patch = parse_arch(arch)
    low = image_size // factor
    if factor < 2 or image_size % factor or low % patch:
        raise ValueError(f"image size {image_size} with task.factor={factor} gives a {low}-pixel low resolution, "
                         f"which the patch size {patch} of {arch} does not divide (task.factor must be >= 2)")
    return [StreamSpec(LO, channels, low, patch, predict=True, pos_scale=float(factor)),
            StreamSpec(HI, channels, image_size, patch)]


def build_lift_model(model_cfg, image_size: int, channels: int, factor: int) -> DiT:
    return build_dit(model_cfg, lift_streams(image_size, channels, model_cfg.arch, factor))
