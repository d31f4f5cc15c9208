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
            errors_data, sampling_compile: str, start: float, machine_left_s: float = 0.0,
            deadline_s: float = 0.0, rates_from: dict | None = None, study: str | None = None) -> None:
    """One device's loop: build the scorer and runner, then do the jobs the parent sends until None."""
    import torch

    from ditlab.experiments.ablation import AblationRunner, FidScorer, Invocation, TrainingStopped, Unit

    if device == "cpu":
        torch.set_num_threads(threads)  # as the sequential runner's process: the same results, bitwise
    elif device.startswith("cuda:"):
        # Everything that says "cuda" without an index (train.device=auto, the evaluation during training)
        # means this worker's GPU, not GPU 0.
        torch.cuda.set_device(torch.device(device))
    try:
        scorer = FidScorer(ref, inception, device)
        runner = AblationRunner(spec, out, scorer, overrides=overrides, errors_data=errors_data, device=device,
                                budget_s=0.0, sampling_compile=sampling_compile, rates_from=rates_from,
                                study=study, log=lambda m: print(f"[{device} #{wid}] {m}", flush=True))
    except BaseException:
        results.put(("error", wid, None, traceback.format_exc()))
        return
    runner.start = start  # the parent's clock (CLOCK_MONOTONIC is system-wide): --budget-s as sequentially
    # --machine-left-s and --deadline-s likewise
    runner.invocation = Invocation(machine_left_s=machine_left_s, deadline_s=deadline_s, started=start)
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
                done = runner.attempt(unit)  # None: failed, recorded in OUT/failed/; the study goes on
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


class _Scheduler:
    """The parent's side of run_parallel: the job queue, the worker processes and their messages.

    A job is (kind, variant name, seed), kind "unit" (train + score) or "train" (a cascade's low-resolution
    run under --only). Jobs go out one per idle, ready worker until --budget-s; a worker that dies silently
    is replaced and its job queued again (at most MAX_ATTEMPTS times); an "error" message stops the study.
    """

    def __init__(self, spec, out: Path, plan, by_name: dict, devices: list[str], worker_args: tuple,
                 budget_s: float, log: Callable[[str], None], machine_left_s: float = 0.0,
                 deadline_s: float = 0.0):
        import multiprocessing as mp

        import torch

        self.out, self.plan, self.by_name, self.budget_s, self.log = out, plan, by_name, budget_s, log
        self.spec, self.worker_args = spec, worker_args
        self.machine_left_s, self.deadline_s = machine_left_s, deadline_s
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.threads = torch.get_num_threads()
        self.workers: dict[int, dict] = {}
        self.next_id = 0
        self.pending = self._pending_jobs()
        self.describe = None  # the scorer's description, from the first worker ready
        self.complete = True
        self.attempts: dict[tuple, int] = {}
        self.failure: str | None = None
        self.waiting_devices = list(devices[1:])  # the first worker computes (and caches) the reference alone
        self.start_worker(devices[0])

    # ---- jobs ---------------------------------------------------------------------------------------
    def _run_done(self, variant: str, seed: int) -> bool:
        from ditlab.experiments.ablation import Unit

        return (self.out / "runs" / Unit(self.by_name[variant], seed).name / "summary.json").exists()

    def _pending_jobs(self) -> list[tuple]:
        from ditlab.experiments.ablation import failure_path

        pending: list[tuple] = []
        # the units that failed before go last, as in the sequential runner
        for u in sorted(self.plan.units, key=lambda u: failure_path(self.out, u.name).exists()):
            if self.plan.unit_done(u):
                continue
            lo = u.variant.lo_variant
            if lo and not any(j[1] == lo and j[2] == u.seed for j in pending) and not self._run_done(lo, u.seed):
                pending.append(("train", lo, u.seed))  # under --only: the cascade's run, trained first
            pending.append(("unit", u.variant.name, u.seed))
        return pending

    def ready(self, job: tuple) -> bool:
        """A cascade unit waits for its lo_variant's run of the same seed."""
        variant = self.by_name[job[1]]
        if job[0] != "unit" or not variant.lo_variant or "cascade" not in variant.paths:
            return True
        return self._run_done(variant.lo_variant, job[2])

    # ---- workers ------------------------------------------------------------------------------------
    def start_worker(self, device: str) -> None:
        wid, self.next_id = self.next_id, self.next_id + 1
        jobs = self.ctx.Queue()
        p = self.ctx.Process(target=_worker, args=(wid, device, self.threads, jobs, self.results, self.spec,
                                                   str(self.out), *self.worker_args, self.plan.start,
                                                   self.machine_left_s, self.deadline_s, self.plan.rates_from,
                                                   None if self.plan.study is None else str(self.plan.study)),
                             daemon=True)
        p.start()
        self.workers[wid] = {"device": device, "proc": p, "jobs": jobs, "job": None, "ready": False}

    def busy(self) -> bool:
        return any(w["job"] is not None for w in self.workers.values())

    def dispatch(self) -> None:
        """Start the waiting devices once the reference exists; give a job to every idle, ready worker."""
        if self.describe is not None:
            while self.waiting_devices:
                self.start_worker(self.waiting_devices.pop(0))
        for w in self.workers.values():
            if not w["ready"] or w["job"] is not None or self.failure:
                continue
            if self.plan.out_of_time():  # no new job after --budget-s
                if self.pending:
                    self.complete = False
                return
            job = next((j for j in self.pending if self.ready(j)), None)
            if job is None:
                continue
            self.pending.remove(job)
            w["job"] = job
            w["jobs"].put(job + (self.budget_s,))

    def finished(self) -> bool:
        """Nothing running and nothing that can start; a job that can never start is a failure, unless a job it
        waits for was stopped (a signal, --machine-left-s): then it waits for the next command."""
        if self.busy() or self.describe is None:
            return False
        if self.failure or not self.pending or self.plan.out_of_time():
            return True
        if any(self.ready(j) for j in self.pending):
            return False
        if not self.complete:
            return True
        self.failure = f"jobs left that can never start: {self.pending}"
        return True

    def reap_dead(self) -> None:
        """A worker that died without a word: its job goes back to the queue, a new worker takes its place."""
        for wid, w in list(self.workers.items()):
            p = w["proc"]
            if p.exitcode is None or p.exitcode == 0:
                continue
            del self.workers[wid]
            job = w["job"]
            self.log(f"ditlab ablate: the worker on {w['device']} died (exit code {p.exitcode})"
                     + (f" during {job[1]}-s{job[2]}; it goes back to the queue" if job else ""))
            if job is not None:
                self.attempts[job] = self.attempts.get(job, 0) + 1
                if self.attempts[job] >= MAX_ATTEMPTS:
                    self.failure = f"{job[1]}-s{job[2]}: its worker died {self.attempts[job]} times"
                self.pending.insert(0, job)
            if not w["ready"]:
                self.failure = f"the worker on {w['device']} died while starting (exit code {p.exitcode})"
            if not self.failure:
                self.start_worker(w["device"])

    def receive(self, kind: str, wid: int, job, payload) -> None:
        w = self.workers[wid]
        if kind == "ready":
            w["ready"] = True
            self.describe = self.describe or payload
        elif kind == "done":
            w["job"] = None
            if payload is False:  # stopped by a signal: more to do (None: failed and recorded, the study goes on)
                self.complete = False
        else:  # "error": the worker's traceback; stop handing out work
            w["job"] = None
            self.failure = self.failure or (
                f"worker on {w['device']}{f' ({job[1]}-s{job[2]})' if job else ''}:\n{payload}")

    def loop(self) -> None:
        import queue

        while True:
            self.dispatch()
            if self.finished():
                return
            try:
                message = self.results.get(timeout=0.5)
            except queue.Empty:
                self.reap_dead()
                if self.failure and (self.describe is None or not self.busy()):
                    return
                continue
            self.receive(*message)
            if message[0] == "error" and self.describe is None:
                return

    def shutdown(self) -> None:
        for w in self.workers.values():
            if w["proc"].is_alive():
                w["jobs"].put(None)
        for w in self.workers.values():
            w["proc"].join(timeout=30)
            if w["proc"].is_alive():
                w["proc"].terminate()


def run_parallel(spec, out, ref: str, inception: str | None, devices: list[str], overrides: list[str] = (),
                 errors_data: str = "", budget_s: float = 0.0, only: list[str] = (), sampling_compile: str = "auto",
                 log: Callable[[str], None] = print, machine_left_s: float = 0.0, deadline_s: float = 0.0,
                 rates_from: dict | None = None, study: Path | None = None) -> int:
    """Do every unit not done yet on the devices (a worker starts no unit that would outlast ``machine_left_s``,
    --machine-left-s, and no score that ``deadline_s`` would cut off); 0 when all are done, EXIT_MORE_TO_DO when
    stopped early, 1 when only failed units (OUT/failed/) are left."""
    from ditlab.experiments.ablation import AblationRunner
    from ditlab.experiments.results import write_results

    plan = AblationRunner(spec, out, scorer=None, overrides=overrides, errors_data=errors_data, device="cpu",
                          budget_s=budget_s, only=only, log=log,
                          rates_from=rates_from, study=study)  # checks the variants; the units in order
    out = Path(out)
    scheduler = _Scheduler(spec, out, plan, {v.name: v for v in spec.variants}, devices,
                           (ref, inception, list(overrides), errors_data, sampling_compile), budget_s, log,
                           machine_left_s, deadline_s)
    try:
        scheduler.loop()
    finally:
        scheduler.shutdown()
    if scheduler.failure:
        raise RuntimeError(f"ditlab ablate: {scheduler.failure}")
    complete = scheduler.complete and not scheduler.pending
    paths = write_results(out, spec, scheduler.describe)
    log(f"ditlab ablate: wrote {', '.join(str(p) for p in paths)}")
    return plan.exit_code(stopped=not complete)
