"""A short human-readable report of a run: loss curve PNG + report.md."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: has the run logged anything yet?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _epochs(summary: dict, last: dict) -> str:
    """Passes over the data: images seen / data set size, over every segment of a resumed run."""
    if "epochs" in summary and summary.get("steps") == last["step"]:
        return f"{summary['epochs']:.2f} ({summary['steps']} steps x {summary['batch_size']} images / " \
               f"{summary['num_examples']} examples)"
    if summary.get("num_examples") and summary.get("batch_size"):  # summary of an earlier step: same batch assumed
        return f"{last['step'] * summary['batch_size'] / summary['num_examples']:.2f}"
    return str(last.get("epoch", "?"))  # an older run: the epoch counter of the last log line


def _wall(summary: dict) -> str:
    """Wall time of the training loop, summed over the segments of a resumed run."""
    text = f"{summary.get('wall_seconds', 0):.1f} s"
    segments = summary.get("segments") or []
    if len(segments) > 1:
        untimed = [seg for seg in segments if seg.get("wall_seconds") is None]
        text += f" over {len(segments)} segments (resumed at step"
        text += f"{'s' if len(segments) > 2 else ''} {', '.join(str(seg['start_step']) for seg in segments[1:])}"
        text += f"; the last one {summary.get('segment_wall_seconds', 0):.1f} s)"
        if untimed:
            text += (f"; steps {untimed[0]['start_step']}-{untimed[-1]['end_step']} are not included (a checkpoint "
                     "written before segments were recorded)")
    return text


def write_report(run_dir, grid: str | None = None) -> Path:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if grid and not Path(grid).is_file():  # the report would link a picture that is not there
        raise FileNotFoundError(f"--grid {grid}: no such file (a PNG of samples, e.g. from `ditlab sample RUN "
                                "--grid PNG`)")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    plot = plot_loss(rows, run_dir / "loss.png")
    first, last = rows[0], rows[-1]
    lines = [
        f"# ditlab run report: {run_dir.name}",
        "",
        f"- steps: {last['step']}, epochs seen: {_epochs(summary, last)}",
        f"- loss: {first['loss']:.4f} (first logged, step {first['step']}) -> {last['loss']:.4f} (last, step {last['step']})",
    ]
    if summary:
        lines += [
            f"- device: {summary.get('device')}, parameters: {summary.get('parameters', 0) / 1e6:.2f} M",
            f"- wall time: {_wall(summary)}, throughput: {summary.get('images_per_s', 0):.1f} images/s",
        ]
        if summary.get("steps", last["step"]) != last["step"]:
            lines.append(f"- note: summary.json is from step {summary.get('steps')}; the run has logged up to step "
                         f"{last['step']} since (a segment still running or stopped): its wall time and throughput "
                         f"are those up to step {summary.get('steps')}")
    lines += ["", f"![training loss]({plot.name})", ""]
    if grid:
        grid_path = Path(grid)
        rel = grid_path.name if grid_path.parent.resolve() == run_dir.resolve() else str(grid_path)
        lines += [f"![samples]({rel})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
