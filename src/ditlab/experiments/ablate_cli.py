"""``ditlab ablate ABLATION.yaml``: train, sample and score every variant of an ablation file.

::

    ditlab ablate configs/ablations/lift.yaml --out runs/lift_study --ref STATS.npz [--inception PATH] \
        [--set data.path=DATA ...] [--data HELD_OUT] [--budget-s SECONDS] [--only VARIANT ...] [--seeds S ...] \
        [--gpus N | --devices cuda:0,cuda:1,...] [--stage NAME] [--compile auto|on|off] [--machine-left-s SECONDS] \
        [--deadline-s SECONDS] [--rates-from DIR]
    ditlab ablate ABLATION.yaml --out DIR --plan [--only V ...] [--stage NAME] [--seeds S ...] [--rates-from DIR]
        # what is done and what is left (of that command), nothing runs
    ditlab ablate ABLATION.yaml --out DIR --report [--stage NAME]      # the tables and plots again from the scores

--gpus N / --devices: one worker process per device takes (variant, seed) units from a queue
(ditlab.experiments.ablation_parallel); the results are the sequential runner's.

A file with ``stages:`` runs them in order, each in OUT/STAGE (ditlab.experiments.stages); --stage NAME runs
only that one (the stages before it must be complete), and --only then names variants of that stage (its
combination, say), where without --stage it narrows the first stage, from whose ranking the others follow;
--seeds, refused there without --stage, gives that stage's units other seeds (a third seed for a close pair).

Exit code 0 when every (variant, path) is scored, 3 when --budget-s, --machine-left-s, --deadline-s or a signal
stopped it first (the lines before say which; run the same command again: finished work is skipped), 1 when
only units that failed are left (OUT/failed/ says why; the other units went on).
"""
from __future__ import annotations


def cmd_ablate(args) -> int:
    import dataclasses

    from ditlab.experiments.ablation import EXIT_MORE_TO_DO, AblationRunner, FidScorer, Invocation
    from ditlab.experiments.ablation_parallel import parse_devices, run_parallel
    from ditlab.experiments.ablation_spec import load_ablation
    from ditlab.experiments.stages import run_stages

    spec = load_ablation(args.ablation)
    if args.stage is not None and not spec.stages:  # (running, --plan or --report)
        raise ValueError(f"ablate: --stage {args.stage}: {args.ablation} has no stages: section")
    if args.report:  # the tables and plots from the score files; nothing runs, no GPU or FID network needed
        from ditlab.experiments.report import write_reports

        given = [flag for flag, on in (("--plan", args.plan), ("--only", args.only), ("--seeds", bool(args.seeds)),
                                       ("--rates-from", args.rates_from is not None)) if on] + _running_flags(args)
        if given:
            raise ValueError(f"ablate: --report takes the file, --out and --stage; {', '.join(given)} "
                             f"do{'es' if len(given) == 1 else ''} not apply to it")
        write_reports(spec, args.out, args.stage)
        return 0
    rates_from = None
    if args.rates_from is not None:
        from ditlab.experiments.timings import load_rates_from

        rates_from = load_rates_from(args.rates_from)
    if args.plan:  # what is done and what is left; nothing runs, no GPU or FID network needed
        from ditlab.experiments.plan import describe_plan

        given = _running_flags(args)
        if given:
            raise ValueError(f"ablate: --plan takes the file, --out, --only, --stage, --seeds and --rates-from; "
                             f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to running it")
        print("\n".join(describe_plan(spec, args.out, args.only, rates_from, args.stage, args.seeds or ())))
        return 0
    if not args.ref:
        raise ValueError("ablate: --ref STATS_OR_DATASET is required (the FID reference of every score)")
    devices = parse_devices(args.gpus, args.devices)  # None: neither flag
    if devices is not None and args.device is not None and args.device not in devices:
        raise ValueError(f"ablate: --device {args.device} is not one of the workers' devices {','.join(devices)} "
                         "(--gpus / --devices): the workers run there, so --device would be ignored; leave it out")
    if args.seeds and not spec.stages:  # e.g. a second seed for the variants whose differences are small (--only)
        spec = dataclasses.replace(spec, seeds=list(args.seeds))  # (with stages: run_stages, for --stage's stage)
    parallel = devices is not None and len(devices) > 1
    device = devices[0] if devices and not parallel else (args.device or "auto")
    scorer = None
    if args.machine_left_s < 0:
        raise ValueError(f"ablate: --machine-left-s {args.machine_left_s:g}: seconds (0: the machine does not end)")
    if args.deadline_s < 0:
        raise ValueError(f"ablate: --deadline-s {args.deadline_s:g}: seconds (0: the command is not stopped)")
    # shared by the stages' runners: "longer than the budget" starts first, never past the machine's end, and no
    # score starts that the command's deadline would cut off
    invocation = Invocation(args.budget_s, machine_left_s=args.machine_left_s, deadline_s=args.deadline_s)

    # a stage's runner prices its units, while the stage has timed nothing, at the whole study's rates (--plan too)
    study = args.out if spec.stages else None

    def run_one(plain, out, budget_s, only) -> int:
        nonlocal scorer
        if parallel:  # one worker process per device
            return run_parallel(plain, out, args.ref, args.inception, devices, overrides=args.set,
                                errors_data=args.data or "", budget_s=budget_s, only=only,
                                sampling_compile=args.compile, machine_left_s=invocation.machine_left_now(),
                                deadline_s=invocation.deadline_left_now(), rates_from=rates_from, study=study)
        # one device (--gpus 1, --devices cuda:1): the sequential runner on it; one scorer for every stage
        scorer = scorer or FidScorer(args.ref, args.inception, device)
        runner = AblationRunner(plain, out, scorer, overrides=args.set, errors_data=args.data or "",
                                device=device, budget_s=budget_s, only=only, sampling_compile=args.compile,
                                invocation=invocation, rates_from=rates_from, study=study)
        return runner.run()

    if spec.stages:
        code = run_stages(spec, args.out, lambda plain, out, left, only: run_one(plain, out, left, only),
                          budget_s=args.budget_s, only=args.only, stage_name=args.stage, overrides=args.set,
                          seeds=args.seeds or ())
    else:
        code = run_one(spec, args.out, args.budget_s, args.only)
    if code == EXIT_MORE_TO_DO:
        # why is said before: a unit or score held back for --budget-s, --machine-left-s or --deadline-s, a stage
        # not started, or a signal (the parallel runner's budget that ran out says nothing more)
        print("ditlab ablate: stopped with work left; run the same command again", flush=True)
    return code


def _running_flags(args) -> list[str]:
    """The flags given that only running the study reads (what it trains on and with, where, how long): --plan
    and --report refuse them rather than ignore them. (--only and --seeds, which say which units, --plan reads.)"""
    return [flag for flag, on in (
        ("--ref", args.ref is not None), ("--inception", args.inception is not None), ("--set", bool(args.set)),
        ("--data", args.data is not None), ("--budget-s", bool(args.budget_s)),
        ("--machine-left-s", bool(args.machine_left_s)), ("--deadline-s", bool(args.deadline_s)),
        ("--gpus", args.gpus is not None), ("--devices", bool(args.devices)),
        ("--device", args.device is not None), ("--compile", args.compile != "auto")) if on]


def add_ablate_parser(subparsers):
    from ditlab.cliargs import add_compile, add_data, add_device, add_inception

    a = subparsers.add_parser("ablate", help="train, sample and FID-score every variant of an ablation file "
                                             "(resumable; results.md, results.csv, results.png)")
    a.add_argument("ablation", help="the ablation YAML (e.g. configs/ablations/lift.yaml)")
    a.add_argument("--out", required=True, help="output folder (runs, scores, grids, results)")
    a.add_argument("--ref", default=None, help="reference statistics .npz (ditlab fid ref) or a data set (required "
                                               "unless --plan)")
    add_inception(a)
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every variant, e.g. data.path=DATA (repeatable)")
    add_data(a, "held-out images for the dp-* paths' error grid and the lo-oracle path", old=("--errors-data",))
    a.add_argument("--budget-s", type=float, default=0.0,
                   help="start no (variant, seed) unit that would end after this many seconds, judged by the last "
                        "unit's time (at least what is left of its training time limit); a unit trained by this "
                        "command is always scored whole; a unit longer than the whole budget starts only as the "
                        "command's first work (stop it with a signal: it resumes next time). 0: no limit; exit code "
                        "3 = more to do")
    a.add_argument("--machine-left-s", type=float, default=0.0, metavar="SECONDS",
                   help="how long the machine lasts from now (e.g. a device session's time left): no unit starts "
                        "that should not be trained and scored within it, even one longer than --budget-s that "
                        "would go on over several commands (its run lives on this machine only). 0: no end")
    a.add_argument("--deadline-s", type=float, default=0.0, metavar="SECONDS",
                   help="when this command will be stopped (e.g. the timeout around a device call): no score starts "
                        "that should not be written by then, judged by the study's measured rate per sample; the "
                        "trained run stays and the next command scores it (exit code 3). 0: no deadline")
    a.add_argument("--rates-from", default=None, metavar="DIR",
                   help="while --out has no timed score of its own, judge times (--plan's estimate, --budget-s, "
                        "--machine-left-s, --deadline-s) by the timed score files under DIR: another study's folder "
                        "or a collected archive restored there, best measured on the same kind of machine; once it "
                        "has, DIR's fill only what --out has not measured (a new network's set-up, compiling a "
                        "sampler, loading a network, the training speed in steps a second; never a variant's own "
                        "speed)")
    a.add_argument("--only", action="append", default=[], metavar="VARIANT",
                   help="run only these variants; in a file with stages, the first stage's (the later stages "
                        "follow from its ranking), or with --stage LATER that stage's own, e.g. its combination")
    a.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds instead of the file's (scores of other seeds already in --out are kept "
                        "and averaged in the tables); in a file with stages, with --stage NAME: that stage's")
    add_device(a)
    add_compile(a)
    a.set_defaults(device=None)  # None: auto; a --device beside --gpus / --devices must be one of theirs
    a.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="one worker process per GPU (cuda:0..N-1), each training one (variant, seed) at a time "
                        "and scoring it right after")
    a.add_argument("--devices", default=None, metavar="LIST",
                   help="the workers' devices instead of --gpus, e.g. cuda:0,cuda:2 (cpu,cpu: two CPU workers)")
    a.add_argument("--stage", default=None, metavar="NAME",
                   help="a file with stages: run only this stage (the ones before it must be complete)")
    a.add_argument("--plan", action="store_true",
                   help="print what is done and what is left in --out (per stage), run nothing")
    a.add_argument("--report", action="store_true",
                   help="write every stage's results tables and plots again from the score files in --out (after "
                        "an upgrade, or from a restored archive on a machine without a GPU); run nothing")
    a.set_defaults(func=cmd_ablate)
    return a
