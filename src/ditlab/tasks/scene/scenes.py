"""Synthetic multi-object scenes for object-conditioned surface generation.

A scene is a variable-length point cloud of a few posed 3-D primitives; the task is
"given the scene and the index of one object, generate points on that object's surface".
The package generates this data itself so that the ground truth is exact: every
primitive has an analytic surface, so we can sample it uniformly by area and measure
the exact distance from any generated point to it. Everything is torch, CPU, and
deterministic given a `torch.Generator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

KINDS = ("sphere", "box", "cylinder")


@dataclass
class Primitive:
    """A posed primitive. `params`: sphere (r,), box (hx, hy, hz), cylinder (r, half_height).

    World = rotation @ local + translation; the cylinder axis is local z.
    """

    kind: str
    params: torch.Tensor
    rotation: torch.Tensor  # (3, 3), local -> world
    translation: torch.Tensor  # (3,)

    def to_local(self, points: torch.Tensor) -> torch.Tensor:
        # Row vectors: local = R^T (w - t)  <=>  (w - t) @ R.
        return (points - self.translation) @ self.rotation

    def to_world(self, points: torch.Tensor) -> torch.Tensor:
        return points @ self.rotation.T + self.translation

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere about `translation` enclosing the primitive (placement test)."""
        p = self.params
        if self.kind == "sphere":
            return float(p[0])
        if self.kind == "box":
            return float(p.norm())
        return float(torch.hypot(p[0], p[1]))


@dataclass
class Scene:
    points: torch.Tensor  # (P, 3)
    normals: torch.Tensor  # (P, 3) outward unit normals
    object_id: torch.Tensor  # (P,) long, index into `primitives`
    primitives: list[Primitive]


@dataclass
class SceneBatch:
    """Padded scenes plus the per-scene conditioning target and its training points."""

    features: torch.Tensor  # (B, Pmax, 4): xyz + "is the target object" flag; zero where padded
    mask: torch.Tensor  # (B, Pmax) bool, True = real point
    target: torch.Tensor  # (B,) long, object index within each scene
    target_points: torch.Tensor  # (B, K, 3) samples on the target surface
    target_normals: torch.Tensor  # (B, K, 3) their outward normals (for pose-like targets)
    target_primitives: list[Primitive]


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """Uniform rotation: a normalised 4-D Gaussian is a uniform unit quaternion."""
    q = torch.randn(4, generator=generator)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _uniform(generator: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def random_primitive(
    generator: torch.Generator,
    kind: Optional[str] = None,
    size: tuple[float, float] = (0.1, 0.3),
    translation: Optional[torch.Tensor] = None,
) -> Primitive:
    """A primitive of random (or given) kind with every size parameter in `size` and a random rotation."""
    if kind is None:
        kind = KINDS[int(torch.randint(len(KINDS), (1,), generator=generator))]
    if kind not in KINDS:
        raise ValueError(f"unknown primitive kind {kind!r}; expected one of {KINDS}")
    params = _uniform(generator, {"sphere": 1, "box": 3, "cylinder": 2}[kind], *size)
    rotation = random_rotation(generator)
    if translation is None:
        translation = torch.zeros(3)
    return Primitive(kind, params, rotation, translation.float())


def _sample_box(h: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # Faces 2a, 2a+1 are the -/+ faces normal to axis a; each has area 4 * prod(h) / h[a].
    face_area = (4 * h.prod() / h).repeat_interleave(2)
    face = torch.multinomial(face_area, n, replacement=True, generator=g)
    axis, sign = face // 2, (face % 2).float() * 2 - 1
    pts = (torch.rand(n, 3, generator=g) * 2 - 1) * h
    rows = torch.arange(n)
    pts[rows, axis] = sign * h[axis]
    normals = torch.zeros(n, 3)
    normals[rows, axis] = sign
    return pts, normals


def _sample_cylinder(r: float, hh: float, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # Parts 0 = side (area 4 pi r hh), 1/2 = bottom/top caps (area pi r^2 each).
    part = torch.multinomial(torch.tensor([4 * hh, r, r]), n, replacement=True, generator=g)
    theta = torch.rand(n, generator=g) * (2 * math.pi)
    u = torch.rand(n, generator=g)
    side = part == 0
    # Side: radius r, z uniform. Caps: radius r*sqrt(u) is uniform over the disc.
    rho = torch.where(side, torch.full_like(u, r), r * u.sqrt())
    cap_sign = torch.where(part == 2, 1.0, -1.0)
    z = torch.where(side, (2 * u - 1) * hh, cap_sign * hh)
    pts = torch.stack([rho * theta.cos(), rho * theta.sin(), z], dim=1)
    normals = torch.where(
        side[:, None],
        torch.stack([theta.cos(), theta.sin(), torch.zeros(n)], dim=1),
        torch.stack([torch.zeros(n), torch.zeros(n), cap_sign], dim=1),
    )
    return pts, normals


def sample_surface(prim: Primitive, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` points uniform by area on the surface, world frame, with outward unit normals: (n, 3), (n, 3)."""
    if prim.kind == "sphere":
        d = torch.randn(n, 3, generator=generator)
        normals = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        pts = normals * prim.params[0]
    elif prim.kind == "box":
        pts, normals = _sample_box(prim.params, n, generator)
    elif prim.kind == "cylinder":
        pts, normals = _sample_cylinder(float(prim.params[0]), float(prim.params[1]), n, generator)
    else:
        raise ValueError(f"unknown primitive kind {prim.kind!r}")
    return prim.to_world(pts), normals @ prim.rotation.T


def signed_distance(prim: Primitive, points: torch.Tensor) -> torch.Tensor:
    """Exact signed distance (negative inside) from world points (n, 3) to the primitive: (n,)."""
    p = prim.to_local(points)
    if prim.kind == "sphere":
        return p.norm(dim=-1) - prim.params[0]
    if prim.kind == "box":
        q = p.abs() - prim.params
    elif prim.kind == "cylinder":
        # Revolving about z reduces the capped cylinder to a rectangle in (rho, z).
        rho = p[..., :2].norm(dim=-1)
        q = torch.stack([rho - prim.params[0], p[..., 2].abs() - prim.params[1]], dim=-1)
    else:
        raise ValueError(f"unknown primitive kind {prim.kind!r}")
    outside = q.clamp_min(0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp_max(0)
    return outside + inside


def surface_distance(prim: Primitive, points: torch.Tensor) -> torch.Tensor:
    """Exact unsigned distance from world points (n, 3) to the surface (inside points included): (n,)."""
    return signed_distance(prim, points).abs()


def _place_primitives(generator, count, extent, size, max_tries) -> list[Primitive]:
    """Rejection placement: bounding spheres stay inside the cube and disjoint, so no two
    objects touch and every point's object label is unambiguous. Objects that do not fit
    in `max_tries` are dropped, so a crowded scene may hold fewer than `count`."""
    prims: list[Primitive] = []
    for _ in range(count):
        for _ in range(max_tries):
            prim = random_primitive(generator, size=size)
            room = max(extent - prim.bounding_radius, 0.0)
            prim.translation = _uniform(generator, 3, -room, room)
            if all(
                float((prim.translation - o.translation).norm()) >= prim.bounding_radius + o.bounding_radius
                for o in prims
            ):
                prims.append(prim)
                break
    return prims


def make_scene(
    generator: torch.Generator,
    num_objects: tuple[int, int] = (2, 5),
    points_per_object: tuple[int, int] = (64, 256),
    extent: float = 1.0,
    size: tuple[float, float] = (0.1, 0.3),
    max_tries: int = 50,
) -> Scene:
    """A random scene; ranges are inclusive and `size` is in units of `extent`."""
    count = int(torch.randint(num_objects[0], num_objects[1] + 1, (1,), generator=generator))
    prims = _place_primitives(generator, count, extent, (size[0] * extent, size[1] * extent), max_tries)
    pts, nrm, ids = [], [], []
    for i, prim in enumerate(prims):
        n = int(torch.randint(points_per_object[0], points_per_object[1] + 1, (1,), generator=generator))
        p, nn = sample_surface(prim, n, generator)
        pts.append(p)
        nrm.append(nn)
        ids.append(torch.full((n,), i, dtype=torch.long))
    return Scene(torch.cat(pts), torch.cat(nrm), torch.cat(ids), prims)


def collate(
    scenes: Sequence[Scene],
    targets: Sequence[int] | torch.Tensor,
    num_target_points: int,
    generator: torch.Generator,
) -> SceneBatch:
    """Pad scenes to the longest cloud and mark the target object, so one tensor carries the condition."""
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if len(targets) != len(scenes):
        raise ValueError(f"{len(scenes)} scenes but {len(targets)} targets")
    b, pmax = len(scenes), max(len(s.points) for s in scenes)
    features = torch.zeros(b, pmax, 4)
    mask = torch.zeros(b, pmax, dtype=torch.bool)
    tpts, tnrm, tprims = [], [], []
    for i, (scene, t) in enumerate(zip(scenes, targets.tolist())):
        if not 0 <= t < len(scene.primitives):
            raise ValueError(f"target {t} out of range for scene {i} with {len(scene.primitives)} objects")
        n = len(scene.points)
        features[i, :n, :3] = scene.points
        features[i, :n, 3] = (scene.object_id == t).float()
        mask[i, :n] = True
        p, nn = sample_surface(scene.primitives[t], num_target_points, generator)
        tpts.append(p)
        tnrm.append(nn)
        tprims.append(scene.primitives[t])
    return SceneBatch(features, mask, targets, torch.stack(tpts), torch.stack(tnrm), tprims)


def make_batch(
    batch_size: int, generator: torch.Generator, num_target_points: int = 64, **scene_kwargs
) -> SceneBatch:
    """`batch_size` fresh scenes, each with a uniformly chosen target object."""
    scenes = [make_scene(generator, **scene_kwargs) for _ in range(batch_size)]
    targets = [int(torch.randint(len(s.primitives), (1,), generator=generator)) for s in scenes]
    return collate(scenes, targets, num_target_points, generator)


def mean_surface_distance(points: torch.Tensor, primitives: Sequence[Primitive]) -> torch.Tensor:
    """Precision-like metric: mean distance of generated points (B, K, 3) to their target surface: (B,)."""
    return torch.stack([surface_distance(prim, pts).mean() for pts, prim in zip(points, primitives)])


def coverage(
    points: torch.Tensor,
    primitives: Sequence[Primitive],
    num_reference: int = 512,
    radius: float = 0.05,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Recall-like metric: fraction of reference surface samples with a generated point within
    `radius`: (B,). It catches collapsed generators that a distance metric alone rewards.
    Without a generator a fixed seed is used so repeated evaluations are comparable."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = []
    for pts, prim in zip(points, primitives):
        ref, _ = sample_surface(prim, num_reference, generator)
        nearest = torch.cdist(ref, pts.float()).min(dim=1).values
        out.append((nearest <= radius).float().mean())
    return torch.stack(out)
