"""The GPU part of the reliability suite (issue 7, items 9, 10, 14, 16, 17 and 18), without pytest.

Prints one JSON line per check, ``{"name", "item", "passed", "details"}``, and exits 1 when a
check failed. Checks marked ``"informational": true`` in their details always pass: they record a
fact (e.g. whether the default GPU mode happens to be bitwise reproducible) for BENCHMARKS.md.

    PYTHONPATH=src python scripts/reliability_gpu.py                  # every check, on cuda
    PYTHONPATH=src python scripts/reliability_gpu.py --only attention # checks whose name contains it
    PYTHONPATH=src python scripts/reliability_gpu.py --device cpu --compile-backend eager  # dry run

Items:

* 9: a checkpoint written by a GPU run (its state.pt holds CUDA tensors: optimizer moments, the
  fused AdamW's step counts and lr) is resumed in a fresh process that sees no GPU
  (``CUDA_VISIBLE_DEVICES=""``): the plain ``torch.load`` fails there (the file really claims
  CUDA), ``ditlab train --resume`` on the CPU loads model, EMA and optimizer state onto the CPU
  (weights equal to the GPU run's, optimizer not fused) and trains 2 more finite steps.
* 10: fully masked query rows give a finite output, exactly zero rows and finite gradients on
  every SDPA backend (math, efficient, flash, cuDNN) in fp32 and bf16. A backend that cannot take
  the call (flash has no mask support; fp32 is not a flash dtype) must *raise*: the check then
  passes with ``"outcome": "unsupported"``. A backend that runs must also equal the math backend
  in fp32 and attention over the unpadded keys (item 11 on the GPU).
* 14: a masked call under the default dispatch equals attention over the unpadded keys (no
  backend that drops the mask is chosen); without a mask every backend that runs bf16 agrees with
  the fp32 math reference within bf16 tolerance (outputs and input gradients).
* 16: 20 training steps with timesteps 0, 1e-6, 1 - 1e-6 and 1 under bf16 autocast (no
  GradScaler) and under fp16 with the GradScaler: every loss and parameter finite.
* 17: ``torch.use_deterministic_algorithms(True)``: two runs are bitwise equal, or the first
  non-deterministic op raises an error that says so (the check sets the torch flag itself, the
  switch that ``train.deterministic=true`` turns on).
* 18: ``torch.compile`` of the model over 12 context lengths builds at most 2 graphs (the static
  first shape, then one dynamic graph) and matches eager.

The run directories and the tiny data set live in a temporary folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# cuBLAS needs this before its first handle is created for deterministic matmuls (item 17).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from ditlab.models.attention import Attention  # noqa: E402

BACKENDS = {
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Relative error ||a - b|| / ||b|| allowed against the fp32 math reference.
REL_TOL = {"fp32": 1e-4, "bf16": 2e-2}
EXTREME_T = (0.0, 1e-6, 1.0 - 1e-6, 1.0)


# ---- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def exact_fp32():
    """TF32 off: the fp32 tolerances assume true fp32 matmuls (the Trainer turns TF32 on)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# How SDPA says that the forced backend cannot take the call (CUDA, CPU wording).
_UNSUPPORTED = ("no available kernel", "no viable backend", "not supported", "unsupported")


def first_line(e: object, limit: int = 300) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def run_or_unsupported(fn):
    """``(result, None)``, or ``(None, reason)`` when SDPA refuses the forced backend: the reason is
    the error plus the warnings in which SDPA explains each refusal (e.g. "Flash attention does not
    support non-null attn_mask"). Any other error propagates and fails the check."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None
        except RuntimeError as e:
            if not any(s in str(e).lower() for s in _UNSUPPORTED):
                raise
            why = sorted({first_line(w.message, 160) for w in caught if "attention" in str(w.message).lower()})
            return None, {"error": first_line(e), "why": why}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def attention_module(device, dtype, cross: bool, seed: int = 0) -> Attention:
    """dim 256, 4 heads: head dim 64, which every fused backend supports."""
    torch.manual_seed(seed)
    return Attention(256, 4, kv_dim=96 if cross else None).to(device=device, dtype=dtype).eval()


def run_attention(attn, x, context, mask, backend):
    """Forward + backward under one SDPA backend (None: default dispatch); returns the output and the
    gradients of the inputs and the parameters."""
    attn.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    context = None if context is None else context.detach().clone().requires_grad_(True)
    ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    with ctx:
        out = attn(x, context=context, mask=mask)
        out.float().square().sum().backward()
    grads = [x.grad] + ([context.grad] if context is not None else []) + [p.grad for p in attn.parameters()]
    return out.detach(), grads


# ---- item 10 (and 11 on the GPU): fully masked rows on every backend ---------------------------
def _masked_inputs(device, cross: bool):
    g = torch.Generator().manual_seed(1)
    if cross:
        x, ctx = torch.randn(3, 8, 256, generator=g), torch.randn(3, 16, 96, generator=g)
        lengths = torch.tensor([10, 0, 16])  # sample 1: every key is padding (a dropped condition)
        mask = torch.arange(16)[None] < lengths[:, None]
        ctx = ctx.masked_fill(~mask[..., None], 50.0)  # garbage in the padding must not matter
        dead = [(1, slice(None))]
        return x.to(device), ctx.to(device), mask.to(device), dead, lengths.tolist()
    x = torch.randn(2, 16, 256, generator=g)
    mask = torch.ones(16, 16, dtype=torch.bool).tril().expand(2, 16, 16).clone()
    mask[0, 3] = False  # query 3 of sample 0 sees no key
    return x.to(device), None, mask.to(device), [(0, 3)], None


def check_fully_masked(device, backend_name: str, dtype_name: str, cross: bool) -> dict:
    dtype = DTYPES[dtype_name]
    x, ctx, mask, dead, lengths = _masked_inputs(device, cross)
    details = {"backend": backend_name, "dtype": dtype_name, "attention": "cross" if cross else "self"}
    with exact_fp32():
        ref_attn = attention_module(device, torch.float32, cross)
        ref, _ = run_attention(ref_attn, x, ctx, mask, SDPBackend.MATH)
        attn = attention_module(device, dtype, cross)
        cast = (lambda t: None if t is None else t.to(dtype))
        result, refused = run_or_unsupported(lambda: run_attention(attn, cast(x), cast(ctx), mask,
                                                                   BACKENDS[backend_name]))
        if refused is not None:  # the backend refuses the call: an error, never a silent answer
            return {**details, "outcome": "unsupported", **refused, "passed": True}
        out, grads = result
        zero_rows = all(int(torch.count_nonzero(out[b, q])) == 0 for b, q in dead)
        finite = all_finite([out]) and all_finite(grads)
        err = rel_err(out.float(), ref)
        passed = zero_rows and finite and err <= REL_TOL[dtype_name]
        details.update(outcome="ran", finite_output_and_grads=finite, dead_rows_zero=zero_rows,
                       rel_err_vs_math_fp32=err, tol=REL_TOL[dtype_name])
        if cross:  # item 11: each alive sample equals attention over its real keys only
            slice_errs = []
            for b, n in enumerate(lengths):
                if n:
                    alone = ref_attn(x[b:b + 1], context=ctx[b:b + 1, :n])
                    slice_errs.append(rel_err(out[b:b + 1].float(), alone))
            details["rel_err_vs_unpadded_slice"] = max(slice_errs)
            passed = passed and max(slice_errs) <= REL_TOL[dtype_name]
    return {**details, "passed": passed}


# ---- item 14 ------------------------------------------------------------------------------------
def check_masked_default_dispatch(device, dtype_name: str) -> dict:
    """Whatever backend the default dispatch picks for a masked call, the mask is honoured."""
    dtype = DTYPES[dtype_name]
    x, ctx, mask, _, lengths = _masked_inputs(device, cross=True)
    with exact_fp32():
        ref_attn = attention_module(device, torch.float32, cross=True)
        attn = attention_module(device, dtype, cross=True)
        out, grads = run_attention(attn, x.to(dtype), ctx.to(dtype), mask, None)
        errs = [rel_err(out[b:b + 1].float(), ref_attn(x[b:b + 1], context=ctx[b:b + 1, :n]))
                for b, n in enumerate(lengths) if n]
    passed = max(errs) <= REL_TOL[dtype_name] and all_finite([out]) and all_finite(grads)
    return {"dtype": dtype_name, "rel_err_vs_unpadded_slice": max(errs), "tol": REL_TOL[dtype_name],
            "passed": passed}


def check_unmasked_agree_bf16(device) -> dict:
    """Without a mask every bf16 backend that runs agrees with the fp32 math reference."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 256, generator=g).to(device)
    with exact_fp32():
        ref_out, ref_grads = run_attention(attention_module(device, torch.float32, cross=False), x, None, None,
                                           SDPBackend.MATH)
        attn = attention_module(device, torch.bfloat16, cross=False)
        per_backend, ran = {}, 0
        for name, backend in BACKENDS.items():
            result, refused = run_or_unsupported(lambda: run_attention(attn, x.to(torch.bfloat16), None, None, backend))
            if refused is not None:
                per_backend[name] = {"outcome": "unsupported", **refused}
                continue
            out, grads = result
            ran += 1
            out_err, grad_err = rel_err(out.float(), ref_out), rel_err(grads[0].float(), ref_grads[0])
            per_backend[name] = {"outcome": "ran", "rel_err_out": out_err, "rel_err_input_grad": grad_err,
                                 "ok": out_err <= REL_TOL["bf16"] and grad_err <= 2 * REL_TOL["bf16"]}
    # math always runs; a second backend that ran is what makes "agree" mean something on a GPU.
    passed = all(v.get("ok", True) for v in per_backend.values()) and ran >= 2
    return {"backends": per_backend, "tol": REL_TOL["bf16"], "passed": passed}


# ---- items 16 and 17: short training runs --------------------------------------------------------
def _tiny_dataset(folder: Path) -> str:
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    images = colours[labels][:, None, None, :] + rng.normal(0, 20, (64, 16, 16, 3))
    path = folder / "tiny.npz"
    np.savez(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels)
    return str(path)


def _tiny_cfg(data: str, run_dir: Path, device, *extra):
    from ditlab.config import load_config

    return load_config(None, [
        "model.arch=DiT-S/4", "model.hidden_size=64", "model.depth=2", "model.num_heads=2",
        "model.num_classes=4", "model.attn_dropout=0.1", f"data.path={data}", "train.batch_size=8",
        f"train.device={device}", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=1000",
        f"train.run_dir={run_dir}", "optim.lr=1e-3", "ema.decay=0.9", *extra])


def _extreme_times(shape, device, generator=None):
    """Training timesteps cycling through 0, 1e-6, 1 - 1e-6 and 1 (instead of the schedule's draw)."""
    n = math.prod(shape)
    t = torch.tensor(EXTREME_T, device=device).repeat(n // len(EXTREME_T) + 1)[:n]
    return t.view(shape)


def _losses(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()] if path.exists() else []


def check_precision_extreme_t(device, work: Path, precision: str, process: str) -> dict:
    from ditlab.train.trainer import Trainer

    pred = "eps" if process == "ddpm" else "velocity"
    run_dir = work / f"prec-{precision}-{process}"
    cfg = _tiny_cfg(_tiny_dataset(work), run_dir, device, "train.steps=20", f"train.precision={precision}",
                    f"diffusion.process={process}", f"diffusion.prediction={pred}")
    trainer = Trainer(cfg, progress=False)
    trainer.objective.schedule.sample_time = _extreme_times
    scaler = trainer.scaler
    code = trainer.run()
    losses = _losses(run_dir)
    params_finite = all_finite(trainer.model.parameters()) and all_finite(trainer.ema.module.parameters())
    details = {"precision": precision, "process": process, "exit_code": code, "steps": trainer.step,
               "losses_finite": len(losses) == 20 and all(math.isfinite(v) for v in losses),
               "params_finite": params_finite, "amp_dtype": str(trainer.amp_dtype),
               "scaler": type(scaler).__name__ if scaler is not None else None}
    if precision == "bf16":  # bf16 has fp32's range: no loss scaling
        scaler_ok = scaler is None and trainer.amp_dtype == torch.bfloat16
    else:
        scaler_ok = scaler is not None and scaler.is_enabled() and trainer.amp_dtype == torch.float16
        details["final_scale"] = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None
    details["scaler_ok"] = scaler_ok
    passed = code == 0 and trainer.step == 20 and details["losses_finite"] and params_finite and scaler_ok
    return {**details, "passed": passed}


def _two_runs(device, work: Path, tag: str, precision: str):
    from ditlab.train.checkpoint import load_weights
    from ditlab.train.trainer import Trainer

    data = _tiny_dataset(work)
    runs = []
    for i in range(2):
        run_dir = work / f"det-{tag}-{precision}-{i}"
        Trainer(_tiny_cfg(data, run_dir, device, "train.steps=5", "train.ckpt_every=5",
                          f"train.precision={precision}"), progress=False).run()
        runs.append((_losses(run_dir), load_weights(run_dir, "model")))
    (la, wa), (lb, wb) = runs
    return la == lb and all(torch.equal(wa[k], wb[k]) for k in wa)


def check_determinism(device, work: Path, precision: str) -> dict:
    details = {"precision": precision}
    torch.use_deterministic_algorithms(True)
    try:
        equal = _two_runs(device, work, "on", precision)
    except RuntimeError as e:
        msg = str(e)
        clear = "determinis" in msg.lower()  # torch names the op and says it has no deterministic kernel
        return {**details, "outcome": "error", "error": first_line(e), "passed": clear}
    finally:
        torch.use_deterministic_algorithms(False)
    return {**details, "outcome": "ran", "bitwise_equal": equal, "passed": equal}


def check_default_mode_reproducible(device, work: Path) -> dict:
    equal = _two_runs(device, work, "off", "bf16")
    return {"informational": True, "bitwise_equal_without_determinism": equal, "passed": True}


# ---- item 9 -------------------------------------------------------------------------------------
# Runs in a process without CUDA: resume the GPU run on the CPU and report what it found, as JSON.
_RESUME_ON_CPU = r"""
import json, sys
import torch
from ditlab.config import load_config
from ditlab.train.checkpoint import find_latest_checkpoint, load_weights
from ditlab.train.trainer import Trainer

run_dir, ref_path = sys.argv[1], sys.argv[2]
out = {"cuda_visible": torch.cuda.is_available()}
folder = find_latest_checkpoint(run_dir)
try:
    torch.load(folder / "state.pt", weights_only=True)
    out["plain_load"] = "ok"
except RuntimeError as e:
    out["plain_load"] = "error: " + str(e).splitlines()[0][:160]
ref = torch.load(ref_path, weights_only=True)
cfg = load_config(str(folder.parents[1] / "config.yaml"), ["train.device=cpu", f"train.steps={ref['step'] + 2}"])
trainer = Trainer(cfg, resume=True, progress=False)
model, ema = trainer.model.state_dict(), trainer.ema.module.state_dict()
out["step"] = trainer.step
out["model_equal"] = all(torch.equal(v, model[k]) for k, v in ref["model"].items())
out["ema_equal"] = all(torch.equal(v, ema[k]) for k, v in ref["ema"].items())
out["sampling_weights_devices"] = sorted({str(t.device) for t in load_weights(run_dir).values()})
opt = trainer.optimizer.state_dict()["state"]
out["optimizer_devices"] = sorted({str(t.device) for s in opt.values() for t in s.values() if torch.is_tensor(t)})
out["optimizer_fused"] = bool(trainer.optimizer.param_groups[0].get("fused"))
out["exit_code"] = trainer.run()
out["final_step"] = trainer.step
out["params_finite"] = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
print(json.dumps(out))
"""


def _tensor_devices(obj) -> set:
    if isinstance(obj, torch.Tensor):
        return {str(obj.device)}
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return set().union(set(), *(_tensor_devices(v) for v in values))


def check_checkpoint_gpu_to_cpu(device, work: Path) -> dict:
    """Train 4 steps on ``device``, then resume the run on the CPU in a process that sees no GPU."""
    import subprocess

    import ditlab
    from ditlab.train.trainer import Trainer

    run_dir = work / "gpu-to-cpu"
    trainer = Trainer(_tiny_cfg(_tiny_dataset(work), run_dir, device, "train.steps=4", "train.ckpt_every=4"),
                      progress=False)
    code = trainer.run()
    state_file = run_dir / "checkpoints" / "step_00000004" / "state.pt"
    # Without map_location every tensor comes back on the device it was saved from.
    saved_devices = sorted(_tensor_devices(torch.load(state_file, weights_only=True)))
    ref = work / "gpu-to-cpu-weights.pt"
    torch.save({"step": trainer.step,
                "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                "ema": {k: v.detach().cpu() for k, v in trainer.ema.module.state_dict().items()}}, ref)
    src = str(Path(ditlab.__file__).resolve().parents[1])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", _RESUME_ON_CPU, str(run_dir), str(ref)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    details = {"gpu_exit_code": code, "saved_state_devices": saved_devices, "cpu_process_rc": proc.returncode}
    if proc.returncode != 0:
        return {**details, "stderr_tail": proc.stderr.strip().splitlines()[-5:], "passed": False}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    details.update(out)
    on_gpu = device.type == "cuda"
    claims_cuda = any(d.startswith("cuda") for d in saved_devices)
    passed = (code == 0 and not out["cuda_visible"] and out["step"] == 4 and out["model_equal"]
              and out["ema_equal"] and out["optimizer_devices"] == ["cpu"] and not out["optimizer_fused"]
              and out["sampling_weights_devices"] == ["cpu"] and out["exit_code"] == 0 and out["final_step"] == 6
              and out["params_finite"]
              # on a GPU the file must really claim CUDA, or the check would prove nothing
              and (not on_gpu or (claims_cuda and out["plain_load"].startswith("error"))))
    return {**details, "passed": passed}


# ---- item 18 ------------------------------------------------------------------------------------
def check_compile_lengths(device, backend: str) -> dict:
    """A DiT that cross-attends to a context set of 12 lengths (5..16): at most 2 graphs."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from ditlab.models.dit import DiT, StreamSpec

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = DiT([StreamSpec("image", 3, 16, 2)], hidden_size=64, depth=2, num_heads=2, context_dim=24)
    model = model.to(device).eval()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter)
    errs = []
    with exact_fp32(), torch.no_grad():
        for m in range(5, 17):
            g = torch.Generator().manual_seed(m)
            x = {"image": torch.randn(2, 3, 16, 16, generator=g).to(device)}
            t = {"image": torch.rand(2, generator=g).to(device)}
            ctx = torch.randn(2, m, 24, generator=g).to(device)
            mask = (torch.arange(m)[None] < torch.tensor([m - 2, m])[:, None]).to(device)
            kw = dict(context=ctx, context_mask=mask, context_drop=torch.tensor([False, True], device=device))
            errs.append(rel_err(compiled(x, t, **kw)["image"], model(x, t, **kw)["image"]))
    torch._dynamo.reset()
    passed = counter.frame_count <= 2 and max(errs) <= 1e-4
    return {"backend": backend, "lengths": "5..16", "graphs": counter.frame_count,
            "max_rel_err_vs_eager": max(errs), "passed": passed}


# ---- the runner ---------------------------------------------------------------------------------
def all_checks(device, work: Path, compile_backend: str):
    """(name, issue item, zero-argument check) in the order they run."""
    checks = [("checkpoint_gpu_to_cpu", 9, lambda: check_checkpoint_gpu_to_cpu(device, work))]
    for cross in (True, False):
        for b in BACKENDS:
            for d in DTYPES:
                kind = "cross" if cross else "self"
                checks.append((f"attention_fully_masked_{kind}_{b}_{d}", 10,
                               lambda b=b, d=d, cross=cross: check_fully_masked(device, b, d, cross)))
    for d in DTYPES:
        checks.append((f"attention_masked_default_dispatch_{d}", 14,
                       lambda d=d: check_masked_default_dispatch(device, d)))
    checks.append(("attention_unmasked_backends_agree_bf16", 14, lambda: check_unmasked_agree_bf16(device)))
    for precision in ("bf16", "fp16"):
        for process in ("ddpm", "flow"):
            checks.append((f"train_{precision}_extreme_t_{process}", 16,
                           lambda p=precision, q=process: check_precision_extreme_t(device, work, p, q)))
    for precision in ("fp32", "bf16"):
        checks.append((f"determinism_mode_{precision}", 17,
                       lambda p=precision: check_determinism(device, work, p)))
    checks.append(("determinism_default_mode", 17, lambda: check_default_mode_reproducible(device, work)))
    checks.append((f"compile_12_lengths_{compile_backend}", 18, lambda: check_compile_lengths(device, compile_backend)))
    return checks


def run_check(name: str, item: int, fn) -> dict:
    """One JSON-able record; an exception is a failed check with its traceback's last lines."""
    try:
        details = fn()
        passed = bool(details.pop("passed"))
    except Exception as e:  # noqa: BLE001 - a crashing check is reported, the others still run
        passed = False
        details = {"exception": f"{type(e).__name__}: {e}"[:500],
                   "where": traceback.format_exc().strip().splitlines()[-3:]}
    return {"name": name, "item": item, "passed": passed, "details": details}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the checks")
    parser.add_argument("--only", nargs="*", default=[], help="run the checks whose name contains one of these")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of item 18")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"name": "setup", "item": None, "passed": False,
                          "details": {"error": "CUDA is not available; use --device cpu for a dry run"}}))
        return 1
    device = torch.device(args.device)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ditlab-reliability-") as tmp:
        for name, item, fn in all_checks(device, Path(tmp), args.compile_backend):
            if args.only and not any(s in name for s in args.only):
                continue
            record = run_check(name, item, fn)
            failed += not record["passed"]
            print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
