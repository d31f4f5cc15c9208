"""The scene network: a DiT over the generated point set, cross-attending to the embedded scene."""
from __future__ import annotations

from ditlab.models.dit import ContextSpec, StreamSpec, build_dit, parse_arch
from ditlab.models.point_set import SceneDiT

STREAM = "points"
DESCRIBE_SET = "target"  # the named context set of scene.describe_target
SCENE_SET = "scene"  # the public name (--cfg-context) of the unnamed set, the scene's point cloud


def describe_set_config(cfg):
    """The model.contexts entry named "target" (None: the defaults)."""
    return next((cs for cs in cfg.model.contexts if cs.name == DESCRIBE_SET), None)


def build_scene_model(cfg, info: dict) -> SceneDiT:
    """The scene network from the config and RUN/model.json facts (K, context channels, the description)."""
    hidden = cfg.model.hidden_size or parse_arch(cfg.model.arch)[0]
    spec = StreamSpec(STREAM, 3, int(info["num_target_points"]), kind="tokens", positions="none")
    other = [cs.name for cs in cfg.model.contexts if cs.name != DESCRIBE_SET]
    if other:
        raise ValueError(f"model.contexts: a scene run has the sets 'scene' (its point cloud) and, with "
                         f"scene.describe_target, {DESCRIBE_SET!r}; got {other}")
    contexts, describe = None, None
    if info.get("describe_target"):
        entry = describe_set_config(cfg)
        dim = entry.dim if entry is not None and entry.dim is not None else hidden
        contexts = [ContextSpec(DESCRIBE_SET, dim, entry.cross_attn_dropout if entry else 0.0,
                                entry.blocks if entry else "all")]
        describe = (DESCRIBE_SET, int(info["describe_kinds"]), int(info["describe_tokens"]))
    elif describe_set_config(cfg) is not None:
        raise ValueError(f"model.contexts names {DESCRIBE_SET!r} but scene.describe_target is false")
    dit = build_dit(cfg.model, [spec], context_dim=hidden, contexts=contexts)
    return SceneDiT(dit, STREAM, int(info["context_channels"]), cfg.scene.fourier_bands, describe=describe)
