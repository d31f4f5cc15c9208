"""The typed configuration of a ditlab run: every default lives here, in one place.

A run is configured by a YAML preset (``configs/*.yaml``) plus ``section.key=value`` overrides on
the command line. Both go through :mod:`ditlab.configlib`, which rejects unknown keys and wrong
types with the dotted key and a did-you-mean suggestion.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ditlab.configlib import load_config as _load_config


@dataclass
class ContextSetConfig:
    # One named context set of model.contexts (docs/context_sets.md, "Several context sets"): its own
    # cross-attention, adaLN shift / scale / gate and learned null in each block it is injected into.
    name: str = ""  # a Python identifier other than "all" (the unnamed set is data.context_path / the scene)
    # Width of its tokens; None: from the data (RUN/model.json), like the unnamed set's context_dim.
    dim: Optional[int] = None
    cross_attn_dropout: float = 0.0  # dropout on this set's cross-attention weights (training only)
    # Probability of replacing this set alone by its own learned null in training (for --cfg-context), drawn
    # independently of the other sets and of task.cond_dropout (which drops everything together).
    cfg_dropout: float = 0.0
    # Blocks it is injected into: "all", "middle" (the middle third: depth // 3 .. depth - depth // 3) or "A:B".
    blocks: str = "all"


@dataclass
class ContextFileConfig:
    # A named context file of data.contexts: the set `name` of model.contexts reads its rows from `path`.
    name: str = ""
    path: str = ""


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
    # Dropout on the cross-attention weights to a context set, separate from attn_dropout (self-attention)
    # because a context set may need its own regularisation (user note 001); active only in train().
    cross_attn_dropout: float = 0.0
    # Normalise queries and keys (RMSNorm per head) for stability at large learning rates.
    qk_norm: bool = False
    # The output layer's initial weights: zero (adaLN-Zero, DiT's choice: the network starts by predicting 0)
    # or xavier (upstream layers get gradients from step 0). For networks whose only useful input is their
    # context, like the deterministic ICL baseline: it left its plateau ~2x sooner (BENCHMARKS.md, issue 6).
    output_init: Literal["zero", "xavier"] = "zero"
    # Class-conditional when > 0 (a learned null label is added for classifier-free guidance).
    num_classes: int = 0
    # Probability of replacing the label with the null label during training (CFG dropout); needs num_classes > 0.
    label_dropout: float = 0.1
    # Named context sets beside the unnamed one (data.context_path, the scene's point cloud), each with its
    # own cross-attention per block (ContextSetConfig). E.g. [{name: text, cfg_dropout: 0.1, blocks: middle}].
    # Empty: today's single set (or none). Their data: data.contexts (image), scene.describe_target (scene).
    contexts: tuple[ContextSetConfig, ...] = ()
    # Architecture options (docs/architecture_options.md); the defaults are DiT's network, bitwise.
    # The MLP: DiT's GELU, or SwiGLU with hidden width 2/3 * mlp_ratio * D rounded to a multiple of 8 (about
    # the same parameters and FLOPs).
    mlp: Literal["gelu", "swiglu"] = "gelu"
    # The affine-free norm before every adaLN modulation (blocks and output layers).
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # U-ViT long skips: block i's output is concatenated to the input of block depth-1-i (i < depth // 2)
    # and projected 2D -> D; the projection starts as [I, 0], i.e. as the network without skips.
    long_skips: bool = False
    # N > 0: the class embedding (the null label when dropped) also enters self-attention as N tokens
    # (+ N learned offsets) before the image tokens, dropped before the output. Needs num_classes > 0.
    class_tokens: int = 0
    # False (with class_tokens > 0): the label reaches the network through the class tokens only; adaLN
    # sees the noise level alone.
    label_in_adaln: bool = True
    # Token routing in training (TREAD; ditlab.models.routing): route_fraction of the tokens, drawn per sample
    # and step, skip the blocks route_blocks = "A:B" (A .. B-1) and rejoin unchanged; eval runs every token.
    route_fraction: float = 0.0
    route_blocks: str = ""


@dataclass
class DiffusionConfig:
    # ddpm: discrete T-step Gaussian diffusion; flow: rectified flow x_t = (1 - t) x0 + t eps.
    process: Literal["ddpm", "flow"] = "ddpm"
    # What the network predicts. ddpm: eps, x0 or v. flow: velocity (v is accepted as an alias) or x0 (the clean
    # image, JiT: Li & He 2025). Formulas of this section's options: docs/diffusion.md.
    prediction: Literal["eps", "x0", "v", "velocity"] = "eps"
    # Where the loss compares. native: the network's own target. velocity (flow only): the velocity implied by
    # the prediction, v_hat = (x_t - x0_hat) / max(t, loss_t_min) against v = eps - x0, i.e. for x0 prediction
    # the x0 error weighted 1 / max(t, loss_t_min)^2 (JiT's loss).
    loss_space: Literal["native", "velocity"] = "native"
    loss_t_min: float = 0.05  # the clamp of t in loss_space=velocity and in turning an x0 prediction into eps
    # Per-element loss weight from the noise level. min_snr: Min-SNR-gamma (Hang et al. 2023), the weight that
    # puts min(SNR, min_snr_gamma) on the x0 error whatever the prediction target (SNR = alpha^2 / sigma^2).
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = 5.0
    schedule: Literal["linear", "cosine"] = "linear"  # DDPM betas
    num_timesteps: int = 1000  # DDPM T (process=ddpm only)
    # Flow matching: how training t is drawn (uniform on (0, 1) or logit-normal(mean, std)); DDPM draws its
    # integer steps uniformly and refuses logit_normal.
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    # Flow matching: training t drawn as above, then warped t' = s t / (1 + (s - 1) t) (SD3's resolution shift;
    # s > 1 trains at more noise). 1 = off.
    time_shift: float = 1.0


@dataclass
class TaskConfig:
    # image: generate images (optionally class-conditional). superres: generate an image given its
    # `factor`x average-pooled copy as a condition stream of its own (own patch and position embedding,
    # its tokens before the target's, user note 000).
    # scene: generate points on one object's surface, cross-attending to the scene's point cloud (the
    # `scene:` section; user note 001).
    # icl: in-context linear regression, each query y generated given the earlier (x, y) pairs of its
    # prompt (the `icl:` section; user note 003).
    # lift: generate an image and its `factor`x average-pooled copy jointly, each scale with its own noise
    # level per sample (the `lift:` section; user note 004, docs/lift.md).
    kind: Literal["image", "superres", "scene", "icl", "lift"] = "image"
    factor: int = 2
    # Probability of replacing the condition (superres: the low-resolution stream; scene: the context set)
    # by the learned null (for CFG). image with data.context_path: the context set *and* the label are
    # dropped together, as the unconditional pass of CFG drops them (model.label_dropout still drops the
    # label alone); 0.1 is typical.
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
    # superres: how the low-resolution condition reaches the target (note 002, strategy 3; docs/superres.md).
    # tokens: today's condition tokens concatenated in self-attention; cross: the condition's patch tokens
    # are a context set the target cross-attends to; branch: ControlNet-style copy of the first
    # branch_blocks blocks (0 = depth // 2) added to the main blocks through zero-initialised linears;
    # adaln: a pooled condition embedding added to the adaLN conditioning. tokens_gated: the tokens layout
    # with a zero-initialised gate per block on what the other tokens read from the condition tokens (two
    # attention passes per receiving block): the tokens form that starts with zero effect after init_from.
    cond_injection: Literal["tokens", "tokens_gated", "cross", "branch", "adaln"] = "tokens"
    # Blocks that receive the condition (cross / branch / adaln / tokens_gated): "all", "middle" (the middle third) or
    # "A:B" (blocks A .. B-1). With tokens only "all" is accepted: the condition tokens are part of every
    # block's self-attention sequence.
    cond_blocks: str = "all"
    branch_blocks: int = 0


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
    # task.kind=image: a context file (.npz of per-image token embeddings with a mask, e.g. from a text
    # encoder; format in ditlab.data.context_sets and docs/context_sets.md) the model cross-attends to.
    # Its width D becomes the model's context_dim (RUN/model.json). Empty: no context set.
    context_path: str = ""
    # task.kind=image: several named context files, "name=path" strings or {name, path} mappings, one per set
    # of model.contexts (a set without an entry there gets the defaults); next to context_path (unnamed).
    contexts: tuple[Union[str, ContextFileConfig], ...] = ()
    # Held-out images of the evaluation during training (train.eval_every; loss, fid, psnr, collapse of
    # image-like kinds). Empty: a fixed seeded subset of the training images (ditlab.data.subset).
    eval_path: str = ""


@dataclass
class SceneConfig:
    # The scene task (task.kind=scene): random scenes of posed primitives (ditlab.tasks.scene.scenes) as point
    # clouds of varying size, padded to the longest and masked; the model generates num_target_points
    # points on the surface of one marked object. Scenes are generated once from `seed` and kept on the
    # device; `ditlab scene eval` draws eval_scenes held-out scenes from `eval_seed`.
    num_scenes: int = 4096
    seed: int = 0
    eval_scenes: int = 256
    eval_seed: int = 1_000_003
    objects: tuple[int, int] = (2, 5)  # objects per scene (inclusive; crowded scenes may hold fewer)
    points_per_object: tuple[int, int] = (64, 256)  # so a scene has a varying number of points
    object_size: tuple[float, float] = (0.1, 0.3)  # primitive size parameters, scenes lie in [-1, 1]^3
    num_target_points: int = 64  # K, the generated set
    # Surface samples stored per training scene; each step draws a fresh K of them, so the model sees
    # the surface, not one fixed set of K points.
    target_pool: int = 512
    # Coordinates the model sees. world: the scene's own. target: centred on the mean of the marked
    # (target) scene points and divided by their RMS radius, so every target is unit-sized next to
    # unit noise; its shape, size beyond the RMS, orientation and neighbours still reach the model
    # only through cross-attention. Generated points are mapped back to the world frame.
    frame: Literal["world", "target"] = "world"
    # Then times this factor (a data scale, like sigma_data in EDM). Generated points are divided by it.
    coord_scale: float = 1.0
    # Octaves of sin/cos features of point coordinates (scene points and generated points) before
    # their MLP embeddings: a linear embedding of 3 coordinates cannot resolve small objects.
    fourier_bands: int = 6
    # Coverage metric: a surface sample counts as covered with a generated point within this radius.
    coverage_radius: float = 0.05
    # A second context set named "target": a few tokens describing the target object (its primitive kind and
    # size parameters, drawn with the scene), beside the scene's point cloud. Configure it (cfg_dropout,
    # blocks, ...) with a model.contexts entry named "target"; sample with --cfg-context scene=W target=W.
    describe_target: bool = False


@dataclass
class ICLConfig:
    # In-context linear regression (task.kind=icl; Garg et al. 2022; docs/icl.md): a prompt is n_points
    # pairs (x, y) with x ~ N(0, I_d), w ~ N(0, tau^2 I_d) per prompt, y = w.x + eps, eps ~ N(0, sigma^2)
    # (sigma = 0: the noiseless setting). The network sees y / (tau sqrt(d)), so that a squared error in
    # its units is the squared error divided by tau^2 d, comparable across d.
    d: int = 5
    n_points: int = 11
    tau: float = 1.0
    sigma: float = 0.0
    # diffusion: generate every query y given its prefix. mse: the deterministic baseline (same tokens,
    # same masks, same network size) that predicts y directly, trained with the squared error.
    objective: Literal["diffusion", "mse"] = "diffusion"
    # Curriculum by training step (Garg et al.): the active dimension starts at d_start and the number of
    # points at points_start (0 = the full value from step 0); every curriculum_every steps they grow by
    # d_inc and points_inc, up to d and n_points. Inactive coordinates of x are zero.
    d_start: int = 0
    points_start: int = 0
    d_inc: int = 1
    points_inc: int = 2
    curriculum_every: int = 2000
    # Defaults of `ditlab icl eval` (its flags override them).
    eval_prompts: int = 1000
    eval_samples: int = 100  # samples per prompt, from which the predictive mean and intervals come
    eval_sampler: Literal["ddpm", "ddim"] = "ddim"
    eval_steps: int = 50
    eval_seed: int = 20261122


@dataclass
class LiftConfig:
    # Joint multi-scale diffusion (task.kind=lift; docs/lift.md): streams "image" (full resolution) and
    # "lowres" (its task.factor x average-pooled copy), both generated; loss = loss_hi + beta * loss_lo,
    # each the mean squared error over its own noised elements. beta = 0: the loss on the high resolution
    # only (the low-resolution stream is still an input).
    beta: float = 1.0
    # How (t_hi, t_lo) is drawn per sample in training. independent: two draws. diagonal: t_lo = t_hi.
    # clean_lo: t_lo = 0 (the super-resolution case; the clean stream carries no loss). mixture: per
    # sample one of lo_ahead (t_lo <= t_hi: the smaller of two draws), independent, lo_noise (t_lo = 1)
    # and hi_noise (t_hi = 1), with the mix_* probabilities (normalised).
    train_mode: Literal["independent", "diagonal", "clean_lo", "mixture"] = "independent"
    mix_lo_ahead: float = 0.4
    mix_independent: float = 0.3
    mix_lo_noise: float = 0.15
    mix_hi_noise: float = 0.15
    # Shift the low-resolution stream's logSNR by log(factor^2), so that equal t means equal SNR to the
    # pooled high resolution (ditlab.diffusion.scale_shift).
    schedule_shift: bool = False
    # The path through the (t_hi, t_lo) grid for sampling and the training preview (ditlab.diffusion.
    # lift_paths: diagonal, lo-first, hi-first, shift:D, lo-fixed, lo-random, dp-hi, dp-total);
    # `ditlab sample --path` overrides it. The dp-* paths read RUN/lift_errors.npz (`ditlab lift errors`).
    sample_path: str = "diagonal"
    # The dynamic-programming planner: the SNR of t = 0 is capped at dp_snr_max (the last step's SNR gain
    # is otherwise infinite), and the error grid has dp_grid + 1 levels per scale.
    dp_snr_max: float = 1.0e4
    dp_grid: int = 16


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
    # adamw, or muon: Muon (torch.optim.Muon's update, batched: ditlab.train.muon) for the 2-D weights
    # of the transformer blocks' linear layers, AdamW (betas, eps above) for every other parameter (embeddings,
    # biases, final layers, learned nulls). One lr, schedule and weight decay for both: muon_adjust_lr
    # match_rms_adamw scales Muon's update to AdamW's RMS (Moonshot's rule), so an AdamW lr carries over.
    name: Literal["adamw", "muon"] = "adamw"
    muon_momentum: float = 0.95  # optim.name=muon only
    muon_adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"  # optim.name=muon only
    # optim.name=muon only: torch.compile Muon's per-shape update (momentum + Newton-Schulz; "off" keeps it eager;
    # the same mathematics, bf16 rounding aside): fewer kernel launches (ditlab.train.muon, scripts/bench_muon.py)
    muon_compile: Literal["off", "default", "reduce-overhead"] = "off"
    # optim.name=muon only: orthogonalise each map of a stacked layer on its own (attention's q, k, v; the adaLN
    # modulation's chunks; SwiGLU's gate and value: ditlab.models.stacked) instead of the fused matrix whole, with
    # each map's own lr scale. false: the fused matrix is one matrix to Muon (the study's muon variants)
    muon_split: bool = False
    # optim.name=muon only: the Muon part's peak lr; null: optim.lr (one lr for both parts, which
    # muon_adjust_lr=match_rms_adamw is made for). Warm-up and decay scale it as they scale optim.lr (the
    # ratio muon_lr / optim.lr holds all run long), and Muon's decoupled weight decay takes it, as in torch.optim.Muon
    muon_lr: Optional[float] = None


@dataclass
class EMAConfig:
    decay: float = 0.9999
    # Decay ramps as min(decay, (1 + step) / (10 + step)) so early averages are not dominated by
    # the random initialisation.
    warmup: bool = True
    every: int = 1
    # > 0: the run's own EMA (what sampling uses) is EDM2's power-function EMA of this relative width in
    # (0, 0.2887] instead of the decay above: its averaging window grows with the run, always this fraction
    # of it (docs/posthoc_ema.md). The same average as post-hoc EMA's tracked width of that sigma_rel, without
    # snapshots. ema.decay and ema.warmup then do not apply. 0 = the exponential EMA of ema.decay.
    sigma_rel: float = 0.0
    # Post-hoc EMA (Karras et al. 2024, EDM2; docs/posthoc_ema.md): besides the EMA above (what sampling
    # uses), keep one fp32 power-function EMA per relative width sigma_rel in (0, 0.2887], e.g. [0.05, 0.1],
    # updated on the same steps (ema.every); `ditlab ema RUN --sigma-rel S` then rebuilds the EMA of any
    # other width from their snapshots. Costs one fp32 copy of the model per entry, in memory (rank 0) and
    # in every checkpoint. Empty = off.
    posthoc_sigma_rels: tuple[float, ...] = ()
    # Snapshots to RUN/ema_snapshots/ every this many steps and at the end of the run; 0 = with every
    # checkpoint (train.ckpt_every, and evaluation and stop saves). Never rotated away.
    posthoc_every: int = 0


@dataclass
class TrainConfig:
    # Length of the run in optimizer steps.
    steps: int = 100_000
    # Optional wall-clock budget in seconds for the training loop (0 = none): the run stops, saves
    # and writes its summary at the first step boundary past it. The clock starts after
    # `untimed_steps` steps, which absorb torch.compile's compilation; everything after counts
    # (logging, sample grids, checkpoints) except evaluation (train.eval_every) and the checkpoint saved
    # only for it, so that the time-to-metric curve (eval/train_seconds in metrics.jsonl) is training time.
    time_limit: float = 0.0
    untimed_steps: int = 0
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto -> cuda if available, else cpu
    # Deterministic kernels (torch.use_deterministic_algorithms): two runs of the same config are
    # bitwise equal on the GPU too, at some speed; an op without a deterministic kernel is an error.
    deterministic: bool = False
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype on GPU; CPU uses fp32
    compile: bool = False
    # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune", ... Deliberately not an
    # error with compile=false (unlike the other unread options): `train.compile=false` over a preset or an
    # ablation (`--set`, e.g. a CPU dry run) must turn compilation off for every variant, whatever its mode.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # Fused Triton adaLN kernels in the DiT blocks (ditlab.models.kernels): "auto" uses them where CUDA and
    # Triton are present, "off" keeps the eager code path, "on" requires them. Off by default: on one H200
    # they slow DiT-S/2 down (-36%) and speed DiT-B/2 up by 6% only (docs/performance.md, issue 17).
    fast_kernels: Literal["auto", "on", "off"] = "off"
    # float8 GEMMs (torchao) for the token-wise linear layers of attention and MLP, recipe "tensorwise" or
    # "rowwise" (ditlab.train.float8); master weights, optimizer and EMA stay fp32, sampling never uses fp8.
    # Needs torchao and, on a GPU, compute capability >= 8.9. Not part of the bf16 speed comparison.
    float8: Literal["off", "tensorwise", "rowwise"] = "off"
    # Non-finite guard. "step": one host sync per step, stop before that step's optimizer update.
    # "log": no per-step sync (GPU, fused AdamW): a device-side flag makes every update from the
    # first non-finite step on a no-op, and the run stops at the next log step naming that step.
    nan_check: Literal["step", "log"] = "step"
    # DDP (under torchrun): gradient bucket size, and whether torch.compile splits the graph at the
    # buckets so that the all-reduce overlaps the backward (dynamo's DDPOptimizer). Splitting costs
    # fusion across the cuts; not splitting leaves the all-reduce after the backward. Measured on
    # 2 x H200 (DiT-B/2): not splitting is faster, 1.93x one GPU against 1.89x (docs/distributed.md).
    ddp_bucket_mb: float = 25.0
    ddp_split_graph: bool = False
    # What torch.compile wraps under DDP: "module" the DDP module (batch gather, noising and loss run
    # eagerly), "step" the whole loss with DDP inside, as on one GPU.
    ddp_compile: Literal["module", "step"] = "module"
    # Gradient all-reduce in bf16 (PyTorch's bf16_compress_hook: half the bytes on the wire, the
    # averaged gradient rounded to bf16 before the fp32 optimizer step) or in fp32 ("none").
    ddp_comm_hook: Literal["none", "bf16"] = "none"
    # Gradients as views into DDP's buckets (no copy in and out of the buckets each step).
    ddp_grad_as_bucket_view: bool = False
    log_every: int = 100
    sample_every: int = 5000  # sample-grid PNG; 0 disables
    ckpt_every: int = 5000
    keep_checkpoints: int = 3
    run_dir: str = "runs/default"
    # Two-stage training: start from the weights of another run (a run directory: its latest checkpoint;
    # RUN/checkpoints/best: the best by its train.eval_metric; or a checkpoint folder; its EMA weights
    # unless init_weights=model). Parameters the new model has and the old one lacks start so that the new
    # model's output is the old one's: zero, or fresh behind a zero gate (ditlab.train.init_from); both lists
    # are printed.
    init_from: str = ""
    init_weights: Literal["ema", "model"] = "ema"
    # Evaluation during training (early stopping; ditlab.train.evaluation). Every eval_every steps (0 = off)
    # the EMA weights are scored on eval_metric and RUN/checkpoints/best names the best checkpoint so far
    # (never rotated away, kept through resume). An eval step always saves a checkpoint first, so eval_every
    # need not be a multiple of ckpt_every. Metrics (which kinds; better):
    #   loss             every kind; lower. The task's loss on eval_num held-out examples, fixed seed.
    #   fid              image, superres, lift; lower. FID of eval_num samples against eval_ref (a stats
    #                    .npz of `ditlab fid ref`, or a data set, cached); Inception from $DITLAB_INCEPTION etc.
    #   psnr             superres; higher. Samples conditioned on eval_num held-out images vs the originals.
    #   collapse         superres; higher. seed_to_residual (ditlab diagnose collapse) of 4 seeds per image.
    #   icl_error_ratio  icl; lower. Worst |error / Bayes error - 1| over k on eval_num held-out prompts.
    # Held-out examples: data.eval_path, else a seeded subset of the training images; scene draws them
    # from scene.eval_seed, icl from its own seed. Evaluation never touches the training RNG or data order.
    # With train.compile on a GPU and eval_num >= 1,000, its sampling is compiled too (`ditlab sample --compile
    # auto`'s rule; the first evaluation pays the compilation, ~30 s).
    eval_every: int = 0
    # With eval_every: evaluate the run's last step too (train.steps reached or train.time_limit spent), which
    # eval_every seldom lands on, so that checkpoints/best can name the final weights and a curve has its end.
    # ditlab ablate turns it off: it scores every run's end itself, and that score closes the curve.
    eval_at_end: bool = True
    # Early stopping proper (user note 002's cure for a model that has overfitted its condition): stop training
    # once eval_metric has not improved on its best for this many evaluations in a row (0 = never; the best
    # checkpoint is kept either way). Counted from metrics.jsonl, so a resumed run keeps its count.
    eval_patience: int = 0
    eval_metric: Literal["loss", "fid", "psnr", "collapse", "icl_error_ratio"] = "loss"
    eval_num: int = 256
    eval_ref: str = ""


@dataclass
class SampleConfig:
    # Defaults of `ditlab sample` and of the grids written during training.
    # dpmpp_2m: DPM-Solver++(2M), second order, one network evaluation per step (docs/diffusion.md).
    sampler: Literal["ddpm", "ddim", "euler", "heun", "dpmpp_2m"] = "ddim"
    steps: int = 50
    # Flow matching: the sampling grid's levels warped t' = s t / (1 + (s - 1) t), s > 1 spends more steps at
    # high noise (every stream whose level changes along the path). 1 = the uniform grid.
    time_shift: float = 1.0
    cfg_scale: float = 1.0
    # Guide only where the noise-to-signal ratio sigma/alpha lies in (lo, hi], e.g. [0.28, 5.42]
    # (Kynkaanniemi et al. 2024); None guides at every step.
    cfg_interval: Optional[tuple[float, float]] = None
    eta: float = 0.0  # DDIM's eta in [0, 1] (0 deterministic, 1 the DDPM posterior): sample.sampler=ddim only
    grid_size: int = 64
    seed: int = 0


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    icl: ICLConfig = field(default_factory=ICLConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def read_saved_config(path) -> Config:
    """The resolved configuration a run saved (RUN/config.yaml), as written: no preset, no overrides, no
    value checks (an old run is read as it was)."""
    import yaml

    from ditlab.configlib import config_from_dict

    return config_from_dict(Config, yaml.safe_load(open(path).read()) or {}, source=str(path))


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Read a preset (or the defaults when ``path`` is None) and apply dotted overrides; values that no
    run can use (a zero batch, a negative learning rate) are errors naming the key."""
    cfg = _load_config(Config, path, list(overrides))
    check_values(cfg, path or "the defaults")
    return cfg


# Counts that must be >= 1 and rates that must be finite and >= 0: (section, key).
POSITIVE_KEYS = (("train", "steps"), ("train", "batch_size"), ("train", "log_every"), ("sample", "steps"),
                 ("diffusion", "num_timesteps"), ("icl", "eval_steps"))
NON_NEGATIVE_RATES = (("optim", "lr"), ("optim", "weight_decay"))


def off_default(section, prefix: str, names) -> list[str]:
    """'prefix.name=value' for each of ``names`` that ``section`` (a config dataclass) sets off its default: the
    options that a check of "applies only with ..." names (an option at its default is never an error)."""
    return [f"{prefix}.{n}={getattr(section, n)}" for n in names if getattr(section, n) != getattr(type(section), n)]


def check_values(cfg: Config, source: str = "") -> None:
    import math

    from ditlab.configlib import ConfigError

    where = f" (in {source})" if source else ""
    for section, key in POSITIVE_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value < 1:
            raise ConfigError(f"{section}.{key} must be >= 1, got {value}{where}")
    for section, key in NON_NEGATIVE_RATES:
        value = getattr(getattr(cfg, section), key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{section}.{key} must be a finite number >= 0, got {value}{where}")
    if cfg.ema.every < 1 or cfg.ema.posthoc_every < 0:
        raise ConfigError(f"ema.every must be >= 1 and ema.posthoc_every >= 0, got {cfg.ema.every} and "
                          f"{cfg.ema.posthoc_every}{where}")
    if not 0 <= cfg.ema.sigma_rel <= 12 ** -0.5:
        raise ConfigError(f"ema.sigma_rel must lie in (0, {12 ** -0.5:.4f}] (0: the exponential EMA of ema.decay), "
                          f"got {cfg.ema.sigma_rel}{where}")
    exponential_only = off_default(cfg.ema, "ema", ("decay", "warmup")) if cfg.ema.sigma_rel else []
    if exponential_only:
        defaults = [f"ema.{k}={str(getattr(EMAConfig, k)).lower()}" for k in ("decay", "warmup")
                    if getattr(cfg.ema, k) != getattr(EMAConfig, k)]
        raise ConfigError(f"{', '.join(exponential_only)}: ema.decay and ema.warmup shape the exponential EMA, and "
                          f"ema.sigma_rel={cfg.ema.sigma_rel} makes the run's EMA a power-function EMA of that width; "
                          f"pass {' '.join(defaults)} ({'their defaults' if len(defaults) > 1 else 'its default'}) "
                          f"beside it, or ema.sigma_rel=0{where}")
    sigma_rels = cfg.ema.posthoc_sigma_rels
    if any(not 0 < s <= 12 ** -0.5 for s in sigma_rels):  # 1/sqrt(12): gamma = 0, the uniform average
        raise ConfigError(f"ema.posthoc_sigma_rels must lie in (0, {12 ** -0.5:.4f}], got {list(sigma_rels)}{where}")
    if len({f"{s:.3f}" for s in sigma_rels}) != len(sigma_rels):  # snapshot file names carry 3 decimals
        raise ConfigError(f"ema.posthoc_sigma_rels must differ in their first 3 decimals, got {list(sigma_rels)}{where}")
    if cfg.ema.posthoc_every and not sigma_rels:
        raise ConfigError(f"ema.posthoc_every={cfg.ema.posthoc_every} applies to post-hoc EMA, which is off "
                          f"(ema.posthoc_sigma_rels is empty): set the widths, e.g. ema.posthoc_sigma_rels=[0.05, 0.1], "
                          f"or leave ema.posthoc_every at 0{where}")
    if cfg.train.init_weights != TrainConfig.init_weights and not cfg.train.init_from:
        raise ConfigError(f"train.init_weights={cfg.train.init_weights} applies to two-stage training: set "
                          f"train.init_from=RUN (the run whose weights to start from) or leave train.init_weights at "
                          f"{TrainConfig.init_weights}{where}")
    optim = cfg.optim
    muon_keys = ("muon_momentum", "muon_adjust_lr", "muon_compile", "muon_split", "muon_lr")
    muon_only = off_default(optim, "optim", muon_keys) if optim.name == "adamw" else []
    if muon_only:
        raise ConfigError(f"{', '.join(muon_only)}: optim.{', optim.'.join(muon_keys)} apply to optim.name=muon, "
                          f"not adamw{where}")
    if optim.muon_lr is not None and not (optim.muon_lr > 0 and optim.lr > 0):
        raise ConfigError(f"optim.muon_lr must be > 0 with optim.lr > 0 (the schedule scales it by muon_lr / lr), got "
                          f"optim.muon_lr={optim.muon_lr}, optim.lr={optim.lr}{where}")
    if optim.decay == "constant" and optim.min_lr_ratio != OptimConfig.min_lr_ratio:
        raise ConfigError(f"optim.min_lr_ratio={optim.min_lr_ratio} applies to optim.decay=cosine or linear (the lr it "
                          f"decays to); with optim.decay=constant the lr stays optim.lr: choose a decay or leave "
                          f"optim.min_lr_ratio at {OptimConfig.min_lr_ratio}{where}")
    if not 0 <= optim.muon_momentum < 1:
        raise ConfigError(f"optim.muon_momentum must lie in [0, 1), got {optim.muon_momentum}{where}")
    if optim.name == "muon" and cfg.train.precision == "fp16":
        raise ConfigError(f"optim.name=muon with train.precision=fp16: fp16's gradient scaler steps a single torch "
                          f"optimizer; use train.precision=bf16 or fp32{where}")
    model = cfg.model  # architecture options (ModelConfig)
    if model.class_tokens < 0:
        raise ConfigError(f"model.class_tokens must be >= 0, got {model.class_tokens}{where}")
    if model.class_tokens and model.num_classes <= 0:
        raise ConfigError(f"model.class_tokens={model.class_tokens} needs model.num_classes > 0{where}")
    if model.num_classes <= 0 and model.label_dropout != ModelConfig.label_dropout:
        raise ConfigError(f"model.label_dropout={model.label_dropout} drops the class label, and this model has none "
                          f"(model.num_classes=0); for a context set's CFG drop use task.cond_dropout or the set's "
                          f"cfg_dropout, or leave model.label_dropout at {ModelConfig.label_dropout}{where}")
    if not model.label_in_adaln and not model.class_tokens:
        raise ConfigError(f"model.label_in_adaln=false needs model.class_tokens > 0 (the label would reach the "
                          f"network nowhere){where}")
    if model.norm != "layernorm" and cfg.train.fast_kernels == "on":
        raise ConfigError(f"train.fast_kernels=on: the fused adaLN kernels support only model.norm=layernorm, "
                          f"got model.norm={model.norm}; use train.fast_kernels=auto (eager for this model) or "
                          f"off{where}")
    from ditlab.diffusion.options import diffusion_problem

    problem = diffusion_problem(cfg)  # the diffusion.* / sample.* options that cannot work together
    if problem:
        raise ConfigError(f"{problem}{where}")
