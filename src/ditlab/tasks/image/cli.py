"""The image task on the command line: `ditlab context make-demo|check` and the conditions of `ditlab sample`."""
from __future__ import annotations

import argparse

from ditlab.cliargs import add_no_progress, positive_int
from ditlab.tasks.base import SampleInputs, refuse_inputs


def sample_conditions(run, inputs: SampleInputs, num: int, progress: bool = True) -> dict:
    """Conditions of ``ditlab sample`` for samples 0..num-1 of an image run: with a context set, rows
    0..num-1 of ``--context FILE`` and, for a class-conditional model, the file's ``labels`` when it
    has them (otherwise sample i keeps class i mod K)."""
    refuse_inputs("image", inputs, ("context", "contexts"), ": it generates images from noise (superres runs take --data)")
    named = named_sample_conditions(run, inputs, num)
    dim = run.info.get("context_dim")
    if inputs.context is None:
        if dim is not None:
            raise ValueError("this run cross-attends to a context set: pass --context FILE (row i conditions sample i)")
        return named
    path = inputs.context
    if dim is None:
        raise ValueError(f"--context {path}: this run was trained without a context set (data.context_path)")
    from ditlab.data.context_sets import load_context_file

    ctx = load_context_file(path)
    ctx.check_dim(dim, "the run (context_dim in model.json)")
    if len(ctx) < num:
        raise ValueError(f"key 'embeddings' of context file {path} has shape {tuple(ctx.embeddings.shape)}: "
                         f"{len(ctx)} rows, fewer than --num {num}")
    rows = ctx.rows(slice(0, num))
    cond = {"context": rows.embeddings, "context_mask": rows.mask}
    num_classes = run.task.num_classes
    if num_classes and rows.labels is not None:
        if int(rows.labels.max()) >= num_classes:
            raise ValueError(f"key 'labels' of context file {path} holds label {int(rows.labels.max())}, but the "
                             f"model has {num_classes} classes")
        cond["labels"] = rows.labels
    return {**cond, **named}


def named_sample_conditions(run, inputs: SampleInputs, num: int) -> dict:
    """Rows 0..num-1 of each ``--context NAME=FILE``, one per named set of the run (data.contexts)."""
    from ditlab.data.context_sets import load_context_file
    from ditlab.tasks.image.task import named_keys

    dims = run.info.get("contexts") or {}
    given = dict(inputs.contexts or ())
    for name in given:
        if name not in dims:
            raise ValueError(f"--context {name}=...: this run's named context sets are {list(dims) or 'none'}")
    cond = {}
    for name, dim in dims.items():
        if name not in given:
            raise ValueError(f"this run cross-attends to the context set {name!r}: pass --context {name}=FILE")
        ctx = load_context_file(given[name])
        ctx.check_dim(dim, f"the run's set {name!r} (contexts in model.json)")
        if len(ctx) < num:
            raise ValueError(f"key 'embeddings' of context file {given[name]} has shape {tuple(ctx.embeddings.shape)}: "
                             f"{len(ctx)} rows, fewer than --num {num}")
        rows = ctx.rows(slice(0, num))
        k, km = named_keys(name)
        cond[k], cond[km] = rows.embeddings, rows.mask
    return cond


def cmd_context_make_demo(args) -> int:
    from ditlab.data import load_image_data
    from ditlab.data.context_demo import make_demo_context
    from ditlab.data.context_sets import save_context_file

    data = load_image_data(args.dataset, args.image_size, progress=not args.no_progress)
    arrays = make_demo_context(data, args.dim, args.seed)
    out = save_context_file(args.out, **arrays)
    lengths = arrays["mask"].sum(axis=1)
    print(f"ditlab: wrote {out}: {len(data)} context sets of {lengths.min()}-{lengths.max()} tokens x {args.dim} "
          f"(e.g. {arrays['captions'][0]!r} for {data.names[0]})")
    return 0


def cmd_context_check(args) -> int:
    from ditlab.data.context_sets import align_to_images, load_context_file

    ctx = load_context_file(args.file)
    lengths = ctx.mask.sum(dim=1)
    n, m, d = ctx.embeddings.shape
    print(f"ditlab: {args.file}: {n} rows of up to {m} tokens x {d} ({ctx.embeddings.dtype}); "
          f"{lengths.min()}-{lengths.max()} real tokens, {int((lengths == 0).sum())} empty row(s); "
          f"{'aligned by names' if ctx.names is not None else 'rows in data set order'}")
    if args.dataset:
        from ditlab.data import load_image_data

        data = load_image_data(args.dataset, args.image_size, progress=not args.no_progress)
        align_to_images(ctx, data.names, data.source)
        print(f"ditlab: every one of the {len(data)} images of {data.source} has a row")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("context", help="context sets (per-image token embeddings, data.context_path)")
    csub = c.add_subparsers(dest="context_command", required=True)
    demo = csub.add_parser("make-demo", help="a demo context file from class names, without a text encoder")
    demo.add_argument("dataset", help="the data set, as data.path (folder, .zip, .npz, torchvision:NAME, "
                                      "'' = the embedded sample)")
    demo.add_argument("--out", required=True, help="output .npz")
    demo.add_argument("--dim", type=positive_int, default=64, help="embedding width D")
    demo.add_argument("--seed", type=int, default=0, help="seeds the word embeddings and the caption templates")
    demo.add_argument("--image-size", type=positive_int, default=None, help="as data.image_size (for folders of mixed sizes)")
    add_no_progress(demo, "no progress bar while decoding the images")
    demo.set_defaults(func=cmd_context_make_demo)
    check = csub.add_parser("check", help="validate a context file, and its alignment to a data set")
    check.add_argument("file", help="the context file (.npz) to validate")
    check.add_argument("dataset", nargs="?", default=None, help="also check that every image of this data set has a row")
    check.add_argument("--image-size", type=positive_int, default=None, help="as data.image_size (for folders of mixed sizes)")
    add_no_progress(check, "no progress bar while decoding the images")
    check.set_defaults(func=cmd_context_check)
