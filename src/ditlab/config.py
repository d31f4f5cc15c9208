"""The typed configuration of a ditlab run: every default lives here, in one place.

A run is configured by a YAML preset (``configs/*.yaml``) plus ``section.key=value`` overrides on
the command line. Both go through :mod:`ditlab.configlib`, which rejects unknown keys and wrong
types with the dotted key and a did-you-mean suggestion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ditlab.configlib import load_config as _load_config


@dataclass
class ModelConfig:
    # Size from the table in ditlab.models.dit (S, B, L, XL) and patch size (2, 4, 8): "DiT-S/2".
    arch: str = "DiT-S/2"
    # Overrides of the size table; None keeps the table's value (used for tiny CPU models).
    hidden_size: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0
    # Positions: 2-D sin-cos added to tokens, or 2-D rotary embedding inside attention.
    pos_embed: Literal["sincos", "rope"] = "sincos"
    # Attention dropout (active only in train()).
    attn_dropout: float = 0.0
    # Normalise queries and keys (RMSNorm per head) for stability at large learning rates.
    qk_norm: bool = False
    # Class-conditional when > 0 (a learned null label is added for classifier-free guidance).
    num_classes: int = 0
    # Probability of replacing the label with the null label during training (CFG dropout).
    label_dropout: float = 0.1


@dataclass
class DiffusionConfig:
    # ddpm: discrete T-step Gaussian diffusion; flow: rectified flow x_t = (1 - t) x0 + t eps.
    process: Literal["ddpm", "flow"] = "ddpm"
    # What the network predicts. ddpm: eps, x0 or v. flow: velocity (v is accepted as an alias).
    prediction: Literal["eps", "x0", "v", "velocity"] = "eps"
    schedule: Literal["linear", "cosine"] = "linear"  # DDPM betas
    num_timesteps: int = 1000  # DDPM T
    # Flow matching: how training t is drawn (uniform on (0, 1) or logit-normal(mean, std)).
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0


@dataclass
class TaskConfig:
    # image: generate images (optionally class-conditional). superres: generate an image given its
    # `factor`x average-pooled copy as a condition stream of its own (own patch and position embedding,
    # its tokens before the target's, user note 000).
    kind: Literal["image", "superres"] = "image"
    factor: int = 2
    # Probability of replacing the low-resolution condition by the learned null (for CFG).
    cond_dropout: float = 0.0
    # Condition noise augmentation: the condition is noised to a level s ~ U(0, cond_noise_max) in
    # training, fed as its own per-token noise level; sampling uses cond_noise_sample.
    cond_noise_max: float = 0.0
    cond_noise_sample: float = 0.0
    # Dummy-condition pretraining (note 000): cond_mode=dummy trains an *unconditional* model with the
    # conditional sequence layout. With probability dummy_prob a sample carries dummy condition tokens
    # (Gaussian noise or zeros); otherwise its condition tokens are masked out of attention. Stage 2
    # then loads it with train.init_from into cond_mode=real (no new parameters).
    cond_mode: Literal["real", "dummy"] = "real"
    dummy_prob: float = 0.15
    dummy_kind: Literal["noise", "zeros"] = "noise"


@dataclass
class DataConfig:
    # Image folder, .zip (ImageFolder layout), .npz, or "torchvision:CIFAR10". Empty: the sample
    # of 5,000 CIFAR-10 training images embedded in the package (offline demo).
    path: str = ""
    # Images are resized (shorter side) and centre-cropped to this size; None keeps the size of the
    # data set, which must then be uniform.
    image_size: Optional[int] = None
    # Where torchvision data sets are stored / downloaded.
    root: str = "~/.cache/ditlab/datasets"
    hflip: bool = True
    # Corrupt images: "error" names the first bad file; "skip" leaves them out and counts them.
    on_bad_image: Literal["error", "skip"] = "error"
    # Use class labels from the data set (folders, npz "labels", torchvision targets).
    use_labels: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    # After warm-up: constant, or decay to lr * min_lr_ratio by the end of the run (the end is
    # train.steps, or train.time_limit when that comes first: progress is the larger fraction).
    decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    fused: bool = True  # fused AdamW where the device supports it


@dataclass
class EMAConfig:
    decay: float = 0.9999
    # Decay ramps as min(decay, (1 + step) / (10 + step)) so early averages are not dominated by
    # the random initialisation.
    warmup: bool = True
    every: int = 1


@dataclass
class TrainConfig:
    # Length of the run in optimizer steps.
    steps: int = 100_000
    # Optional wall-clock budget in seconds for the training loop (0 = none): the run stops, saves
    # and writes its summary at the first step boundary past it. The clock starts after
    # `untimed_steps` steps, which absorb torch.compile's compilation; everything after counts
    # (logging, sample grids, checkpoints).
    time_limit: float = 0.0
    untimed_steps: int = 0
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto -> cuda if available, else cpu
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype on GPU; CPU uses fp32
    compile: bool = False
    # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune", ...
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # Non-finite guard. "step": one host sync per step, stop before that step's optimizer update.
    # "log": no per-step sync (GPU, fused AdamW): a device-side flag makes every update from the
    # first non-finite step on a no-op, and the run stops at the next log step naming that step.
    nan_check: Literal["step", "log"] = "step"
    log_every: int = 100
    sample_every: int = 5000  # sample-grid PNG; 0 disables
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    run_dir: str = "runs/default"
    # Two-stage training: start from the weights of another run (a run directory or checkpoint
    # folder; its EMA weights unless init_weights=model). Parameters the new model has and the old
    # one lacks (e.g. a new condition pathway) start at zero; both lists are printed.
    init_from: str = ""
    init_weights: Literal["ema", "model"] = "ema"


@dataclass
class SampleConfig:
    # Defaults of `ditlab sample` and of the grids written during training.
    sampler: Literal["ddpm", "ddim", "euler", "heun"] = "ddim"
    steps: int = 50
    cfg_scale: float = 1.0
    # Guide only where the noise-to-signal ratio sigma/alpha lies in (lo, hi], e.g. [0.28, 5.42]
    # (Kynkaanniemi et al. 2024); None guides at every step.
    cfg_interval: Optional[tuple[float, float]] = None
    eta: float = 0.0
    grid_size: int = 64
    seed: int = 0


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Read a preset (or the defaults when ``path`` is None) and apply dotted overrides."""
    return _load_config(Config, path, list(overrides))
