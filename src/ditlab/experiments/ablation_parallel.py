"""``ditlab ablate --gpus N`` / ``--devices D1,D2,...``: the ablation's (variant, seed) units on N devices.

One worker process per device (multiprocessing, "spawn": torch and fork do not mix), each with its own
AblationRunner and FidScorer on its device, takes one job at a time from the parent: a unit (train, then
sample and score its paths right away, exactly as the sequential runner's _do_unit) or, under --only, a
cascade's low-resolution run to train. A unit with a cascade path waits until its lo_variant's run of the
same seed has summary.json. Every result is written atomically by the unit's worker as in the sequential
runner, so a stopped study resumes. A worker that dies mid-unit (non-zero exit code) is replaced and its
unit is given to a worker again (its unfinished run folder has no summary.json and is trained again from
the start). No new job starts after --budget-s; the parent writes results.md/csv/png at the end.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Callable

KILL_ENV = "DITLAB_ABLATE_TEST_KILL_UNIT"  # tests: the worker exits (code 9) while training this unit, once
MAX_ATTEMPTS = 3  # a unit whose worker died this many times stops the study


def parse_devices(gpus: int | None, devices: str | None) -> list[str] | None:
    """The worker devices of --gpus N / --devices LIST (None: neither flag, the sequential runner)."""
    import torch

    if gpus is not None and devices:
        raise ValueError("ablate: give --gpus N or --devices LIST, not both")
    if gpus is not None:
        if gpus < 1:
            raise ValueError(f"ablate: --gpus {gpus}: needs at least 1")
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > have:
            raise ValueError(f"ablate: --gpus {gpus} but this machine has {have} CUDA device(s)")
        return [f"cuda:{i}" for i in range(gpus)]
    if devices is None:
        return None
    from ditlab.devices import resolve_device

    names = [d.strip() for d in devices.split(",")]
    if not all(names):
        raise ValueError(f"ablate: --devices {devices!r}: a comma-separated list such as cuda:0,cuda:1 or cpu,cpu")
    for d in names:
        dev = resolve_device(d, setting="--devices")
        if d in ("auto", "cuda"):
            raise ValueError(f"ablate: --devices {devices!r}: name each device (cpu or cuda:N), not {d!r}")
        if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
            raise ValueError(f"ablate: --devices {devices!r}: no {d} (this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s))")
    return names


def _worker(wid: int, device: str, threads: int, jobs, results, spec, out, ref, inception, overrides,
            errors_data, start: float) -> None:
    """One device's loop: build the scorer and runner, then do the jobs the parent sends until None."""
    import torch

    from ditlab.experiments.ablation import AblationRunner, FidScorer, TrainingStopped, Unit

    if device == "cpu":
        torch.set_num_threads(threads)  # as the sequential runner's process: the same results, bitwise
    elif device.startswith("cuda:"):
        # Everything that says "cuda" without an index (train.device=auto, the evaluation during training)
        # means this worker's GPU, not GPU 0.
        torch.cuda.set_device(torch.device(device))
    try:
        scorer = FidScorer(ref, inception, device)
        runner = AblationRunner(spec, out, scorer, overrides=overrides, errors_data=errors_data, device=device,
                                budget_s=0.0, log=lambda m: print(f"[{device} #{wid}] {m}", flush=True))
    except BaseException:
        results.put(("error", wid, None, traceback.format_exc()))
        return
    runner.start = start  # the parent's clock (CLOCK_MONOTONIC is system-wide): --budget-s as sequentially
    results.put(("ready", wid, None, scorer.describe()))
    kill = os.environ.get(KILL_ENV, "")
    if kill:
        train = runner.train

        def train_or_die(unit, run_dir):
            marker = Path(out) / f".test-killed-{unit.name}"
            if unit.name == kill and not marker.exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "metrics.jsonl").write_text("{}\n")  # half a run: no summary.json
                marker.write_text("killed\n")
                os._exit(9)
            train(unit, run_dir)

        runner.train = train_or_die
    by_name = {v.name: v for v in spec.variants}
    while True:
        job = jobs.get()
        if job is None:
            return
        kind, name, seed, budget_s = job
        runner.budget_s = budget_s
        try:
            unit = Unit(by_name[name], seed)
            if kind == "train":
                run_dir = runner.out / "runs" / unit.name
                if not (run_dir / "summary.json").exists():
                    runner.train(unit, run_dir)
                done = True
            else:
                done = runner._do_unit(unit)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except TrainingStopped as stop:  # a signal stopped the training at a checkpoint: resumed next time
            print(f"[{device} #{wid}] ditlab ablate: {stop}", flush=True)
            results.put(("done", wid, job, False))
            continue
        except BaseException:
            results.put(("error", wid, job, traceback.format_exc()))
            return
        results.put(("done", wid, job, done))


def run_parallel(spec, out, ref: str, inception: str | None, devices: list[str], overrides: list[str] = (),
                 errors_data: str = "", budget_s: float = 0.0, only: list[str] = (),
                 log: Callable[[str], None] = print) -> int:
    """Do every unit not done yet on the devices; 0 when all are done, EXIT_MORE_TO_DO otherwise."""
    import multiprocessing as mp
    import queue

    import torch

    from ditlab.experiments.ablation import EXIT_MORE_TO_DO, AblationRunner, Unit
    from ditlab.experiments.results import write_results

    plan = AblationRunner(spec, out, scorer=None, overrides=overrides, errors_data=errors_data, device="cpu",
                          budget_s=budget_s, only=only, log=log)  # checks the variants; the units in order
    out = Path(out)
    by_name = {v.name: v for v in spec.variants}
    pending: list[tuple] = []  # (kind, variant name, seed)
    for u in plan.units:
        if not plan.unit_done(u):
            lo = u.variant.lo_variant
            if lo and not any(j[1] == lo and j[2] == u.seed for j in pending):
                if not (out / "runs" / Unit(by_name[lo], u.seed).name / "summary.json").exists():
                    pending.append(("train", lo, u.seed))  # under --only: the cascade's run, trained first
            pending.append(("unit", u.variant.name, u.seed))

    def ready(job) -> bool:  # a cascade unit waits for its lo_variant's run of the same seed
        lo = by_name[job[1]].lo_variant
        if job[0] != "unit" or not lo or "cascade" not in by_name[job[1]].paths:
            return True
        return (out / "runs" / Unit(by_name[lo], job[2]).name / "summary.json").exists()

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    threads = torch.get_num_threads()
    workers: dict[int, dict] = {}
    next_id = 0

    def start_worker(device: str) -> int:
        nonlocal next_id
        wid, next_id = next_id, next_id + 1
        jobs = ctx.Queue()
        p = ctx.Process(target=_worker, args=(wid, device, threads, jobs, results, spec, str(out), ref, inception,
                                              list(overrides), errors_data, plan.start), daemon=True)
        p.start()
        workers[wid] = {"device": device, "proc": p, "jobs": jobs, "job": None, "ready": False}
        return wid

    describe, complete, attempts, failure = None, True, {}, None
    waiting_devices = list(devices[1:])  # the first worker computes (and caches) the reference alone
    start_worker(devices[0])
    try:
        while True:
            if describe is not None:
                while waiting_devices:
                    start_worker(waiting_devices.pop(0))
            # hand out jobs to idle workers (none after the budget)
            for wid, w in workers.items():
                if not w["ready"] or w["job"] is not None or failure:
                    continue
                if plan.out_of_time():
                    if pending:
                        complete = False
                    break
                job = next((j for j in pending if ready(j)), None)
                if job is None:
                    continue
                pending.remove(job)
                w["job"] = job
                w["jobs"].put(job + (budget_s,))
            busy = [w for w in workers.values() if w["job"] is not None]
            if not busy and describe is not None and (failure or not pending or plan.out_of_time()
                                                       or not any(ready(j) for j in pending)):
                if pending and not failure and not plan.out_of_time():
                    failure = f"jobs left that can never start: {pending}"
                break
            try:
                kind, wid, job, payload = results.get(timeout=0.5)
            except queue.Empty:
                # a worker that died without a word: its job goes back to the queue, a new worker takes its place
                for wid, w in list(workers.items()):
                    p = w["proc"]
                    if p.exitcode is not None and p.exitcode != 0:
                        del workers[wid]
                        job = w["job"]
                        log(f"ditlab ablate: the worker on {w['device']} died (exit code {p.exitcode})"
                            + (f" during {job[1]}-s{job[2]}; it goes back to the queue" if job else ""))
                        if job is not None:
                            attempts[job] = attempts.get(job, 0) + 1
                            if attempts[job] >= MAX_ATTEMPTS:
                                failure = f"{job[1]}-s{job[2]}: its worker died {attempts[job]} times"
                            pending.insert(0, job)
                        if not w["ready"]:
                            failure = f"the worker on {w['device']} died while starting (exit code {p.exitcode})"
                        if not failure:
                            start_worker(w["device"])
                if failure and (describe is None or not any(w["job"] for w in workers.values())):
                    break
                continue
            w = workers[wid]
            if kind == "ready":
                w["ready"] = True
                describe = describe or payload
            elif kind == "done":
                w["job"] = None
                if not payload:
                    complete = False
            else:  # "error": the worker's traceback; stop handing out work
                w["job"] = None
                failure = failure or f"worker on {w['device']}{f' ({job[1]}-s{job[2]})' if job else ''}:\n{payload}"
                if describe is None:
                    break
    finally:
        for w in workers.values():
            if w["proc"].is_alive():
                w["jobs"].put(None)
        for w in workers.values():
            w["proc"].join(timeout=30)
            if w["proc"].is_alive():
                w["proc"].terminate()
    if failure:
        raise RuntimeError(f"ditlab ablate: {failure}")
    if pending:
        complete = False
    paths = write_results(out, spec, describe)
    log(f"ditlab ablate: wrote {', '.join(str(p) for p in paths)}")
    return 0 if complete else EXIT_MORE_TO_DO
