"""The scene network: a DiT over the generated point set, cross-attending to the embedded scene."""
from __future__ import annotations

from ditlab.models.dit import StreamSpec, build_dit, parse_arch
from ditlab.models.point_set import SceneDiT

STREAM = "points"


def build_scene_model(cfg, info: dict) -> SceneDiT:
    """The scene network from the config and RUN/model.json facts (K, context channels)."""
    hidden = cfg.model.hidden_size or parse_arch(cfg.model.arch)[0]
    spec = StreamSpec(STREAM, 3, int(info["num_target_points"]), kind="tokens", positions="none")
    dit = build_dit(cfg.model, [spec], context_dim=hidden)
    return SceneDiT(dit, STREAM, int(info["context_channels"]), cfg.scene.fourier_bands)
