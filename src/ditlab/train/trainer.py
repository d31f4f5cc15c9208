"""The training loop: data on the device, one objective, EMA, atomic checkpoints, exact resume.

Everything a step draws at random (timesteps, noise, flips, label dropout, attention dropout)
comes from torch's global RNG, whose state is saved in every checkpoint; the data order comes from
(seed, epoch) and a position. So a resumed run repeats the uninterrupted one exactly (bitwise on
the CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from ditlab.config import Config, read_saved_config
from ditlab.configlib import diff_configs, save_config, to_dict
from ditlab.devices import resolve_device
from ditlab.diffusion.objectives import build_objective
from ditlab.generation import preview as generation_preview
from ditlab.imageio import save_image_grid
from ditlab.models.kernels import configure_fast_kernels, resolve_fast_kernels
from ditlab.report import read_metrics
from ditlab.tasks.registry import build_model, build_task, build_train_data, check_kind_options, task_kind
from ditlab.train.checkpoint import (capture_rng_state, find_best_checkpoint, find_latest_checkpoint,
                                     load_checkpoint, restore_rng_state, save_checkpoint, segment_timed_steps,
                                     timed_seconds_of, write_best_pointer)
from ditlab.train.clock import TrainingClock
from ditlab.train.compile_cache import cache_state, mark_compiled, network_key
from ditlab.train.data_order import EpochSampler
from ditlab.train.distributed import (any_rank, barrier, gather_objects, init_distributed, mean_over_ranks,
                                      per_rank_seed, rank_device, rank_slice)
from ditlab.train.init_from import init_from
from ditlab.train.ema import EMA, PowerEMA
from ditlab.train.posthoc_ema import PosthocEMA, check_resume, sigma_rel_tag, supersede_snapshots
from ditlab.train.evaluation import Evaluator, check_eval_config
from ditlab.train.float8 import convert_float8, float8_candidates
from ditlab.train.log import RunLogger
from ditlab.train.optim import build_optimizer, lr_at, set_lr
from ditlab.train.stop import StopRequest

# Config keys that change parameter shapes or the meaning of the weights: a resumed run may not change them.
SHAPE_KEYS = ("task.kind", "task.factor", "model.arch", "model.hidden_size", "model.depth", "model.num_heads", "model.mlp_ratio",
              "model.pos_embed", "model.num_classes", "model.qk_norm", "data.image_size",
              "diffusion.process", "diffusion.prediction",
              # the architecture options (ditlab.models.dit.dit_kwargs): norm and label_in_adaln change no
              # shape, but weights trained with one setting mean something else under the other
              "model.mlp", "model.norm", "model.long_skips", "model.class_tokens", "model.label_in_adaln")
EXIT_NONFINITE = 2
# Under DDP the ranks agree on stopping (time limit, SIGTERM) every this many steps (one small all-reduce).
AGREE_EVERY = 10


class StepActions(NamedTuple):
    """What one training step calls for after the optimizer update (Trainer._step_actions)."""

    log: bool
    sample: bool
    eval: bool
    save: bool
    save_for_eval_only: bool  # a save only so that checkpoints/best can name this step: off the clock
    snapshot: bool  # power-EMA snapshots (ema.posthoc_sigma_rels)
    last: bool  # the run's last step: train.steps reached or train.time_limit spent


class NonFiniteLossError(RuntimeError):
    pass


def autocast_dtype(cfg: Config, device: torch.device):
    if device.type != "cuda" or cfg.train.precision == "fp32":
        return None
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16


def enable_determinism() -> None:
    """Deterministic kernels everywhere (train.deterministic). cuBLAS needs its workspace fixed before
    its first use; ops without a deterministic kernel raise (see train_step)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def check_training_config(cfg: Config) -> list[str]:
    """The start-up checks that need no data (the trainer runs them first, `ablate` for every variant before
    any training): evaluation options (e.g. a metric the kind lacks) and options the kind does not read (e.g.
    task.cond_injection on an image run). Returns the notes to print (evaluation options left unused)."""
    notes = check_eval_config(cfg)
    check_kind_options(cfg)
    return notes


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(cfg.train.run_dir).expanduser()
        self.dist = init_distributed(cfg.train.device)  # a world of one unless started by torchrun
        self.progress = progress and self.dist.is_main
        if cfg.train.batch_size % self.dist.world_size:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide over the "
                             f"{self.dist.world_size} processes")
        for note in check_training_config(cfg):  # before any data is read
            self._say(note)
        if cfg.train.fast_kernels == "on":  # a machine without CUDA or Triton: an error before the (slow) data
            resolve_fast_kernels("on", resolve_device(cfg.train.device))
        # Data first: a bad path or a corrupt image fails before any model or GPU set-up.
        self.data = build_train_data(cfg, self.progress)
        self.device = rank_device(self.dist, cfg.train.device)
        if cfg.train.deterministic:
            enable_determinism()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank

        self.model = build_model(cfg, self.data.info).to(self.device)
        configure_fast_kernels(self.model, cfg.train.fast_kernels, self.device)  # before the EMA copy
        # Looked up once: validating a checkpoint reads its files.
        latest = find_latest_checkpoint(self.run_dir) if self.run_dir.exists() else None
        if cfg.train.init_from and not (resume and latest is not None):  # resumed runs load their own checkpoint
            self.init_report = init_from(self.model, cfg.train.init_from, cfg.train.init_weights)
        self.objective = build_objective(cfg.diffusion)
        self.objective.schedule.to(self.device)
        # the run's own EMA: exponential (ema.decay), or EDM2's power-function EMA of width ema.sigma_rel
        self.ema = (PowerEMA(self.model, cfg.ema.sigma_rel) if cfg.ema.sigma_rel
                    else EMA(self.model, cfg.ema.decay, cfg.ema.warmup))
        # Post-hoc EMA's power EMAs (docs/posthoc_ema.md): rank 0 only, which alone saves; every rank holds
        # the same weights after the optimizer step, so the others would keep identical copies.
        self.posthoc = (PosthocEMA(self.model, cfg.ema.posthoc_sigma_rels)
                        if cfg.ema.posthoc_sigma_rels and self.dist.is_main else None)
        # After the EMA copies (they stay plain), before the optimizer and torch.compile; same parameters.
        skipped = float8_candidates(self.model)[1] if cfg.train.float8 != "off" else []
        self.float8_layers = convert_float8(self.model, cfg.train.float8, self.device)
        if self.float8_layers:
            self._say(f"ditlab: train.float8={cfg.train.float8}: {len(self.float8_layers)} linear layers train in fp8"
                      + (f"; {len(skipped)} stay bf16 (widths not divisible by 16: {', '.join(skipped[:4])}"
                         f"{', ...' if len(skipped) > 4 else ''})" if skipped else ""))
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.order = EpochSampler(self.data.num_examples, cfg.train.batch_size, cfg.train.seed)
        self.step = 0
        self.last_loss = float("nan")
        self.segments: list[dict] = []  # the earlier training segments of a resumed run (summary.json, report)
        # State of run()'s segment, None until run() starts it (save() and evaluate() may come before it)
        self.clock: TrainingClock | None = None
        self._segment_start: tuple[float, int] | None = None
        self._compile_cache: str | None = None  # whether this machine had compiled the network: summary.json
        self._stopped_early = False  # by train.eval_patience: summary.json says so

        self.data.to(self.device)  # e.g. uint8 images on the device: no loader in the hot loop
        self.train_model, self._loss_fn = self._wrap_for_training()  # DDP and torch.compile, as configured
        self.task = build_task(cfg, self.train_model, self.objective)
        # The sync-free guard needs the fused optimizer's found_inf support (CUDA, no GradScaler).
        # (optim.name=muon: its Muon part takes found_inf too, ditlab.train.muon.)
        self.sync_free = (cfg.train.nan_check == "log" and self.device.type == "cuda" and cfg.optim.fused
                          and self.scaler is None)
        self._halt = torch.zeros((), dtype=torch.bool, device=self.device)
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.ema_task = build_task(cfg, self.ema.module, self.objective, training=False)
        self._prepare_run_dir(resume, latest)
        # Evaluation (train.eval_every) on rank 0, the EMA weights; the others wait at a barrier.
        self.evaluator = self.best = None
        if cfg.train.eval_every and self.dist.is_main:
            self.evaluator = Evaluator(cfg, self.data, self.ema_task, self.ema.module, self.device, self.amp_dtype,
                                       cfg.train.batch_size // self.dist.world_size)
            self.best = self._resumed_best()
        if hasattr(self.data, "set_step"):  # data whose batches depend on the step (a curriculum)
            self.data.set_step(self.step)
        self._advance_data = getattr(self.data, "advance", None)
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main)  # rank 0 writes
        if self.step and self.dist.is_main:
            self.logger.truncate_after(self.step)
        barrier(self.dist)

    # ---- set-up -------------------------------------------------------------------------------
    def _wrap_for_training(self):
        """(the module the loss calls, the loss function): the model or DDP around it; torch.compile around
        the DDP module or around the whole loss (train.ddp_compile, train.compile)."""
        cfg = self.cfg
        train_model, loss_fn = self.model, self._loss  # what the loss calls: the model, or DDP around it
        if self.dist.enabled:
            torch.manual_seed(per_rank_seed(cfg.train.seed, self.dist.rank))  # each rank draws its own noise
            # find_unused_parameters stays False: dropped conditions are chosen with torch.where.
            train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                bucket_cap_mb=cfg.train.ddp_bucket_mb, gradient_as_bucket_view=cfg.train.ddp_grad_as_bucket_view)
            if cfg.train.ddp_comm_hook == "bf16":
                if self.device.type != "cuda":
                    raise ValueError("train.ddp_comm_hook=bf16 needs CUDA GPUs (NCCL); use 'none' on "
                                     f"{self.device.type}")
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
                train_model.register_comm_hook(None, bf16_compress_hook)
            if cfg.train.compile:  # one compiled graph (the measured faster default), or, with
                # ddp_split_graph, dynamo cuts it at the gradient buckets so the all-reduce overlaps the backward
                torch._dynamo.config.optimize_ddp = cfg.train.ddp_split_graph
        # What torch.compile wraps: the DDP module (the documented DDP + torch.compile pattern), or the
        # whole loss (batch gather, noising, network, loss), as on one GPU.
        compile_module = cfg.train.compile and self.dist.enabled and cfg.train.ddp_compile == "module"
        if compile_module:
            train_model = torch.compile(train_model, mode=cfg.train.compile_mode)
        elif cfg.train.compile:
            loss_fn = torch.compile(self._loss, mode=cfg.train.compile_mode)
        return train_model, loss_fn

    def _prepare_run_dir(self, resume: bool, latest: Path | None) -> None:
        if latest is not None and not resume:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints (latest {latest.name}); pass --resume "
                                  "to continue it or choose another train.run_dir")
        saved_cfg = self.run_dir / "config.yaml"
        if latest is not None:
            self._check_config_change(saved_cfg)
            state = load_checkpoint(latest, model=self.model, optimizer=self.optimizer, ema=self.ema,
                                    map_location=self.device)
            self.step = int(state["step"])
            self._resume_ema_kind(state, latest)
            for warning in check_resume(self.cfg.ema.posthoc_sigma_rels, state, latest):  # on every rank: all raise
                self._say(f"ditlab: warning: {warning}")
            if self.posthoc is not None:
                self.posthoc.load(latest, state)
            # A checkpoint from before segments were recorded: its steps took an unknown time.
            self.segments = list(state.get("segments") or [self._segment(0, self.step, None, None)])
            self.order.load_state_dict(state["data"])
            self._restore_rng(state)
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            self._say(f"ditlab: resumed {self.run_dir} from {latest.name} (step {self.step})")
        elif resume:
            self._say(f"ditlab: --resume given but {self.run_dir} has no checkpoint; starting from step 0")
        if not self.dist.is_main:
            return
        if self.posthoc is not None and (moved := supersede_snapshots(self.run_dir, self.step)):
            self._say(f"ditlab: moved {moved} power-EMA snapshot(s) of steps after {self.step} to "
                      f"{self.run_dir / 'ema_snapshots' / 'superseded'} (this run redoes those steps)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, str(saved_cfg))
        # What `ditlab sample` needs to rebuild the network without reading the data set again.
        info = {"task": self.cfg.task.kind, "num_classes": self.cfg.model.num_classes, **self.data.info}
        (self.run_dir / "model.json").write_text(json.dumps(info, indent=2) + "\n")

    def _resumed_best(self) -> dict | None:
        """The stored best (checkpoints/best) a resumed run compares against; a corrupt one is skipped
        with a warning (find_best_checkpoint), one of another metric or ahead of the resumed step (its
        folder will be written again) is dropped with a warning."""
        found = find_best_checkpoint(self.run_dir) if self.step else None
        if found is None:
            return None
        record = found[1]
        if record.get("metric") != self.cfg.train.eval_metric:
            self._say(f"ditlab: warning: {found[0].parent / 'best'} is by {record.get('metric')!r}, this run evaluates "
                      f"{self.cfg.train.eval_metric!r}: the next evaluation starts a new best")
            return None
        if int(record.get("step", -1)) > self.step:
            self._say(f"ditlab: warning: the best checkpoint {found[0].name} is ahead of the resumed step {self.step}: "
                      "the next evaluation starts a new best")
            return None
        return record

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def _restore_rng(self, state: dict) -> None:
        """Each rank continues its own random stream when the world size is the one saved; on another
        world size the data order still continues exactly, but the draws are re-seeded per rank."""
        saved = state.get("rng_ranks") or [state["rng"]]
        if len(saved) == self.dist.world_size:
            restore_rng_state(saved[self.dist.rank])
            return
        torch.manual_seed(per_rank_seed(self.cfg.train.seed, self.dist.rank, self.step))
        self._say(f"ditlab: warning: checkpoint written by {len(saved)} process(es), resuming on "
                  f"{self.dist.world_size}: the data order continues exactly, the random draws (noise, timesteps, "
                  "dropout) are re-seeded, so the run does not repeat an uninterrupted one bit for bit")

    def _resume_ema_kind(self, state: dict, folder: Path) -> None:
        """The run's EMA goes on as the kind the checkpoint's was (the ema section of the config it saved with it;
        older checkpoints, before ema.sigma_rel: exponential): a power EMA continued from another average would not
        be the profile its width claims. A power EMA goes on from its last update, the newest step up to the
        checkpoint's that the saved ema.every updated."""
        saved_ema = (state.get("config") or {}).get("ema") or {}
        saved, now = float(saved_ema.get("sigma_rel", 0.0)), float(self.cfg.ema.sigma_rel)

        def kind(sigma_rel: float) -> str:
            return f"the power EMA of sigma_rel {sigma_rel:g}" if sigma_rel else "the exponential EMA (ema.decay)"

        if sigma_rel_tag(saved) != sigma_rel_tag(now):
            raise ValueError(f"cannot resume {self.run_dir} with ema.sigma_rel={now:g}: {folder} holds {kind(saved)}, "
                             f"and continuing it as {kind(now)} would average another profile; keep "
                             f"ema.sigma_rel={saved:g} or start a new train.run_dir")
        if isinstance(self.ema, PowerEMA):
            self.ema.last_step = self.step - self.step % int(saved_ema.get("every", self.cfg.ema.every))

    def _check_config_change(self, saved_path: Path) -> None:
        if not saved_path.exists():
            return
        changes = diff_configs(read_saved_config(saved_path), self.cfg)
        shape_keys = SHAPE_KEYS + task_kind(self.cfg).shape_keys
        fatal = {k: v for k, v in changes.items() if k in shape_keys}
        if fatal:
            listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fatal.items())
            raise ValueError(f"cannot resume {self.run_dir}: these settings change the model ({listing}); "
                             "start a new train.run_dir or use the saved values")
        for k, (a, b) in changes.items():
            self._say(f"ditlab: warning: resuming with {k} changed from {a!r} to {b!r}")

    # ---- one step -----------------------------------------------------------------------------
    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The batch (gather, augmentation) + the task's noising, network and loss: what torch.compile sees."""
        batch = self.data.batch(idx)
        ctx = torch.autocast(idx.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            return self.task.loss_on_batch(**batch).mean()

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (loss, grad norm) as device tensors.

        With nan_check="step" a non-finite loss or gradient raises NonFiniteLossError before the
        optimizer step. With the sync-free guard the step becomes a no-op on the device and
        :meth:`check_finite` raises at the next log step.
        """
        idx = self.order.next_indices()  # the global batch: every rank takes its own slice of it
        if self.dist.enabled:
            idx = idx[rank_slice(self.dist, len(idx))]
        idx = idx.to(self.device, non_blocking=True)
        try:
            loss = self._loss_fn(idx)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        except RuntimeError as e:
            if self.cfg.train.deterministic and "deterministic" in str(e):
                raise RuntimeError(f"train.deterministic=true, but an op of this model has no deterministic "
                                   f"kernel on {self.device}: {e}. Turn train.deterministic off, or change the "
                                   "setting that uses the op") from e
            raise
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        set_lr(self.optimizer, self.current_lr())
        hold = None
        if self.sync_free:
            bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
            if self.dist.enabled:  # one rank's bad loss holds every rank (no host sync: enqueued on the stream)
                bad_int = bad.int()
                torch.distributed.all_reduce(bad_int, op=torch.distributed.ReduceOp.MAX)
                bad = bad_int.bool()
            self._first_bad = torch.where(bad & (self._first_bad < 0), self.step + 1, self._first_bad)
            self._halt |= bad
            hold = self._halt
            self.optimizer.found_inf = hold.float()  # fused AdamW skips its update when this is 1
        else:
            loss_value, gnorm_value = torch.stack([loss.detach().float(), gnorm.float()]).tolist()
            loss_bad, gnorm_bad = any_rank(self.dist, [not math.isfinite(loss_value),
                                                       self.scaler is None and not math.isfinite(gnorm_value)],
                                           self.device)  # every rank stops at the same step
            if loss_bad or gnorm_bad:
                self.optimizer.zero_grad(set_to_none=True)
                what = "loss" if loss_bad else "gradient norm"
                raise NonFiniteLossError(f"non-finite {what} at step {self.step + 1} (loss={loss_value}, grad "
                                         f"norm={gnorm_value}); stopped before the optimizer step, the last "
                                         "checkpoint is untouched")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself on inf gradients (fp16 overflow)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self._advance_data is not None:
            self._advance_data()
        if self.step % self.cfg.ema.every == 0:
            self.ema.update(self.model, self.step, hold=hold)
            if self.posthoc is not None:
                self.posthoc.update(self.model, self.step, hold=hold)
        return loss.detach(), gnorm.detach()

    def run_fraction(self) -> float:
        """Fraction of the run done: by steps, or by the time budget when that is nearer its end."""
        p = self.step / max(self.cfg.train.steps, 1)
        clock = self.clock
        if clock is not None and clock.limit > 0 and clock.start is not None:
            p = max(p, clock.used() / clock.limit)
        return p

    def current_lr(self) -> float:
        return lr_at(self.step, self.cfg.optim, self.run_fraction())

    def _muon_lr(self) -> dict:
        """``lr_muon`` for the log where optim.muon_lr gives Muon's part its own lr (``lr`` is optim.lr's)."""
        muon_lr = getattr(self.cfg.optim, "muon_lr", None)
        return {} if muon_lr is None else {"lr_muon": self.current_lr() * muon_lr / self.cfg.optim.lr}

    def check_finite(self) -> None:
        """Raise for a non-finite step caught by the sync-free guard (one host sync)."""
        if self.sync_free and bool(self._halt):
            step = int(self._first_bad)
            raise NonFiniteLossError(f"non-finite loss or gradient at step {step}; no optimizer or EMA update was "
                                     f"applied from step {step} on, the last checkpoint is untouched")

    # ---- outputs ------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; every rank must call it: the RNG states are gathered)."""
        rngs = gather_objects(self.dist, capture_rng_state())
        if not self.dist.is_main:
            return None
        state = {"data": self.order.state_dict(), "rng": rngs[0], "config": to_dict(self.cfg),
                 "segments": self._segments_now()}
        if self.dist.enabled:
            state["rng_ranks"] = rngs
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.posthoc is not None:
            self.posthoc.flush()  # the snapshots written in the background before this step are on disk first
            state["posthoc_ema"] = self.posthoc.state()
        return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.ema, state=state,
                               keep=self.cfg.train.keep_checkpoints,
                               extra_weights=self.posthoc.checkpoint_weights() if self.posthoc else None)

    def sample_grid(self) -> Path | None:
        """The task's preview (e.g. a PNG grid of samples) from the EMA weights; None when the task
        draws nothing. Sampling uses its own per-sample generators: the training RNG is untouched."""
        if not self.dist.is_main:
            return None
        preview = generation_preview(self.ema_task, self.ema.module, self.data, self.cfg.sample, self.device,
                                     self.amp_dtype)
        if preview is None:
            return None
        images, nrow = preview
        path = save_image_grid(images, self.run_dir / "samples" / f"step_{self.step:08d}.png", nrow=nrow)
        self.logger.log_image(self.step, "samples", str(path))
        return path

    def evaluate(self) -> float | None:
        """train.eval_metric of the EMA weights at this step (rank 0; every rank must call it), logged as
        eval/<metric>; checkpoints/best moves to this step's checkpoint (saved just before) when it is the
        best so far. The training RNG and data order are untouched (ditlab.train.evaluation)."""
        value = None
        if self.evaluator is not None:
            value = self.evaluator()
            # The training clock's seconds at this step (evaluation excluded): time-to-metric curves.
            seconds = self.clock.elapsed() if self.clock is not None else 0.0
            self.logger.log(self.step, {f"eval/{self.evaluator.name}": value, "eval/train_seconds": seconds})
            if self.evaluator.better(value, None if self.best is None else float(self.best["value"])):
                name = f"step_{self.step:08d}"
                record = {"metric": self.evaluator.name, "value": value, "mode": self.evaluator.mode, "step": self.step}
                write_best_pointer(self.run_dir, name, record)
                self.best = {"checkpoint": name, **record}
        barrier(self.dist)
        return value

    def _evaluation_pending(self) -> bool:
        """Whether this run resumed at an evaluation step whose evaluation never logged its value: an eval step
        saves before it evaluates, so a process killed during the evaluation (a signal's grace period is
        shorter than a FID) resumes from that step. The evaluation is done again first, so that no point of
        a time-to-metric curve goes missing. The same answer on every rank (rank 0 has the log)."""
        if not (self.step and self._is_eval_step(self._at_end())):
            return False
        pending = self.evaluator is not None and not self._logged_evaluation(self.step)
        return any_rank(self.dist, [pending], self.device)[0]

    def _patience_spent(self) -> bool:
        """train.eval_patience evaluations in a row have not improved on the best (rank 0 counts them in the
        log, so a resumed run keeps its count; every rank gets the answer and must call this together)."""
        patience = self.cfg.train.eval_patience
        if not patience:  # the same config on every rank: no collective to agree on
            return False
        spent = False
        if self.evaluator is not None and self.best is not None:
            key = f"eval/{self.evaluator.name}"
            since = [r["step"] for r in read_metrics(self.run_dir) if key in r and r["step"] > self.best["step"]]
            spent = len(since) >= patience
        return any_rank(self.dist, [spent], self.device)[0]

    def _say_stopped_early(self) -> None:
        self._stopped_early = True
        best = self.best or {}  # rank 0's: the others print nothing
        self._say(f"ditlab: early stop at step {self.step}: {self.cfg.train.eval_metric} has not improved on its "
                  f"best ({best.get('value', float('nan')):.6g} at step {best.get('step')}) for "
                  f"{self.cfg.train.eval_patience} evaluations (train.eval_patience); checkpoints/best names it")

    def _is_eval_step(self, last: bool) -> bool:
        """Whether train.eval_every evaluates at this step: every eval_every steps, and at the run's ``last`` step
        with train.eval_at_end."""
        cfg = self.cfg.train
        return bool(cfg.eval_every) and (self.step % cfg.eval_every == 0 or (last and cfg.eval_at_end))

    def _at_end(self) -> bool:
        """Whether the resumed step is the run's last: train.steps reached, or train.time_limit spent."""
        cfg = self.cfg.train
        return self.step >= cfg.steps or 0 < cfg.time_limit <= self._earlier_timed_seconds()

    def _logged_evaluation(self, step: int) -> bool:
        key = f"eval/{self.evaluator.name}"  # the log was truncated at the resumed step: no torn line is left
        return any(r.get("step") == step and key in r for r in read_metrics(self.run_dir))

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Train to train.steps; returns the process exit code (0, 128 + signal, or 2 on NaN)."""
        cfg = self.cfg.train
        # Redraw often on a terminal, rarely into a log file (a non-TTY gets one line per redraw).
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self._window = [0.0, 0, time.perf_counter()]  # loss sum (device), steps, start time
        t_start, start_step = time.perf_counter(), self.step
        self._segment_start = (t_start, start_step)
        # Before the first compiled step: whether this machine compiled this network before (set-up of seconds,
        # not tens of seconds; summary.json says which, for ditlab ablate's estimates)
        self._compile_cache = cache_state(self.cfg)
        self.clock = TrainingClock(cfg.time_limit, cfg.untimed_steps, self.device,
                                   offset=self._earlier_timed_seconds())
        if self._evaluation_pending():
            self._say(f"ditlab: the evaluation at step {self.step} did not finish before the run stopped; "
                      "doing it before training goes on")
            self.evaluate()  # the clock has not started: its seconds are the checkpoint's, as they were then
        stopped_early = bool(cfg.eval_every) and self._patience_spent()  # a resumed run that had stopped early
        if stopped_early:
            self._say_stopped_early()
        with StopRequest() as stop:
            while self.step < cfg.steps and not stopped_early:
                try:
                    loss, gnorm = self.train_step()
                    self._window[0], self._window[1] = self._window[0] + loss.float(), self._window[1] + 1
                    out_of_time, stop_now = self.clock.tick(self.step - start_step), stop.requested
                    if self.dist.enabled:  # every rank ends the loop at the same step, or none does
                        agree = self.step % AGREE_EVERY == 0 or self.step == cfg.steps
                        out_of_time, stop_now = (any_rank(self.dist, [out_of_time, stop_now], self.device)
                                                 if agree else (False, False))
                    todo = self._step_actions(out_of_time, stop_now)
                    if todo.log or todo.sample or todo.save or todo.snapshot:
                        self.check_finite()  # never log, sample or save past a non-finite step
                except NonFiniteLossError as err:
                    bar.close()
                    self._say(f"ditlab: error: {err}")
                    if self.posthoc is not None:  # those of earlier, finite steps: a failed write still says so
                        self.posthoc.flush()
                    self.logger.close()
                    return EXIT_NONFINITE
                bar.update(1)
                if todo.log:
                    self._log(gnorm, bar)
                if todo.sample:
                    self.sample_grid()
                if todo.snapshot and self.posthoc is not None:  # before the checkpoint: one never lacks its snapshot
                    self.posthoc.write_snapshots(self.run_dir, self.step, background=True)
                if todo.save:
                    # A save made only for the evaluation is part of measuring, not of training: off the clock.
                    with self.clock.paused() if todo.save_for_eval_only else contextlib.nullcontext():
                        self.save()
                if todo.eval:
                    with self.clock.paused():
                        self.evaluate()
                    stopped_early = self._patience_spent()
                    if stopped_early and not todo.last:
                        if self.posthoc is not None and not todo.snapshot:  # the run's end can be reconstructed
                            self.posthoc.write_snapshots(self.run_dir, self.step)
                        self._say_stopped_early()
                if stop_now:
                    bar.close()
                    self._say(f"ditlab: stopped at step {self.step}; resume with --resume")
                    self.logger.close()
                    # A rank stopped for another rank's signal exits as if it had received SIGTERM.
                    return stop.exit_code or 128 + signal.SIGTERM
                if out_of_time:
                    self._say(f"ditlab: time limit of {cfg.time_limit:.0f} s reached at step {self.step}")
                    break
        bar.close()
        self._write_summary(time.perf_counter() - t_start)
        if self._compile_cache != "off" and self.dist.is_main:
            mark_compiled(network_key(self.cfg))  # the next training of this network here compiles from the cache
        self.logger.close()
        return 0

    def _step_actions(self, out_of_time: bool, stop_now: bool) -> "StepActions":
        """What the step just taken calls for, from the config and the step alone (the same on every rank)."""
        cfg = self.cfg.train
        last = self.step == cfg.steps or out_of_time
        # An eval step saves first, so checkpoints/best always names a checkpoint of that step.
        eval_now = self._is_eval_step(last)
        save_anyway = self.step % cfg.ckpt_every == 0 or last or stop_now
        save_now = save_anyway or eval_now
        # Power-EMA snapshots: with every checkpoint (posthoc_every 0), else every posthoc_every steps and at
        # the end, so that the run's final step can be reconstructed.
        snap_every = self.cfg.ema.posthoc_every
        snapshot = bool(self.cfg.ema.posthoc_sigma_rels) and (
            save_now if not snap_every else self.step % snap_every == 0 or last)
        return StepActions(log=self.step % cfg.log_every == 0 or last,
                           sample=bool(cfg.sample_every) and self.step % cfg.sample_every == 0,
                           eval=eval_now, save=save_now, save_for_eval_only=eval_now and not save_anyway,
                           snapshot=snapshot, last=last)

    def _write_summary(self, wall: float) -> None:
        """RUN/summary.json (rank 0): steps, loss, and wall time, throughput and epochs over every segment."""
        cfg = self.cfg.train
        # Wall time, throughput and epochs over every segment of a resumed run (this one: segment_wall_seconds).
        segments = self._segments_now()
        timed = [seg for seg in segments if seg["wall_seconds"] is not None]
        run_wall = sum(seg["wall_seconds"] for seg in timed)
        images = sum((seg["end_step"] - seg["start_step"]) * (seg["batch_size"] or cfg.batch_size) for seg in segments)
        timed_images = sum((seg["end_step"] - seg["start_step"]) * seg["batch_size"] for seg in timed)
        # on the training clock: set-up, untimed steps and evaluation during training left out
        clocked = [segment_timed_steps(seg, cfg.untimed_steps) for seg in segments]
        clocked_images = sum(n * (seg["batch_size"] or cfg.batch_size) for n, seg in zip(clocked, segments))
        timed_seconds = self.clock.elapsed()
        summary = {"steps": self.step, "final_loss": self.last_loss, "wall_seconds": run_wall,
                   "segment_wall_seconds": wall, "segments": segments,
                   # the run's, every segment's: a resumed run's clock holds only this segment's steps
                   "timed_seconds": timed_seconds,
                   "timed_steps": sum(clocked),
                   # over the wall time (compilation, saves and evaluation during training included) ...
                   "images_per_s": timed_images / max(run_wall, 1e-9),
                   # ... and over the timed seconds: the training's own rate
                   "timed_images_per_s": clocked_images / timed_seconds if timed_seconds > 0 else None,
                   "epochs": images / self.data.num_examples, "num_examples": self.data.num_examples,
                   "batch_size": cfg.batch_size,
                   "device": str(self.device), "world_size": self.dist.world_size,
                   "parameters": sum(p.numel() for p in self.model.parameters())}
        state = self._compile_cache
        if state is not None:  # this segment's; a resumed run's earlier segments set up unrecorded
            summary["segment_compile_cache"] = state
            summary["compile_cache"] = state if len(segments) == 1 else "resumed"
        if self.best is not None:
            summary["best"] = self.best
        if self._stopped_early:
            summary["stopped_early"] = {"step": self.step, "patience": cfg.eval_patience}
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    @staticmethod
    def _segment(start_step: int, end_step: int, wall_seconds, batch_size) -> dict:
        return {"start_step": start_step, "end_step": end_step, "wall_seconds": wall_seconds, "batch_size": batch_size}

    def _segments_now(self) -> list[dict]:
        """The training segments behind the current step: those of the checkpoint this run resumed from,
        then this process's (its wall time of the training loop so far)."""
        if self._segment_start is None:  # save() outside run()
            return list(self.segments)
        t0, s0 = self._segment_start
        now = self._segment(s0, self.step, time.perf_counter() - t0, self.cfg.train.batch_size)
        clock = self.clock
        if clock is not None:  # this segment's share of the time budget (what a resume continues from)
            now["timed_seconds"] = clock.used() - clock.offset
            now["timed_steps"] = clock.timed_steps
        return self.segments + [now]

    def _earlier_timed_seconds(self) -> float:
        """Timed seconds of the segments before this one: a resumed time-limited run gets what is left of
        train.time_limit, not a new budget."""
        return timed_seconds_of(self.segments)

    def _log(self, gnorm: torch.Tensor, bar) -> None:
        loss_sum, n, t0 = self._window
        if self.dist.enabled:
            loss_sum = mean_over_ranks(self.dist, torch.as_tensor(loss_sum, device=self.device))
        self.last_loss = float(loss_sum) / n  # the one host sync of a logging interval
        metrics = {"loss": self.last_loss, "grad_norm": float(gnorm), "lr": self.current_lr(),
                   **self._muon_lr(),
                   "images_per_s": n * self.cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9),
                   "epoch": self.order.epoch}
        self.logger.log(self.step, metrics)
        bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{metrics['images_per_s']:.0f}")
        self._window = [0.0, 0, time.perf_counter()]
