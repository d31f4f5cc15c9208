"""Stage big inputs for the device machine, one carry per call (docs/gpu_runbook.md).

A device call carries at most 64 MiB, and the working tree (tracked and untracked-not-ignored files) counts
towards it. The eighth session's staging folders were fixed by hand and one of them (test zip + half the
Inception network) stopped fitting once the repository grew; the failed call left the machine idle long enough
to go back, and a trained run was lost. This script measures the working tree and cuts the inputs to fit.

    python3 scripts/gpu_stage.py prepare                 # here: .gpu_stage/1, 2, ... each fits one carry
    python3 scripts/gpu_stage.py take .gpu_stage/2       # on the device: copy into /root/cache, join what is whole

`prepare` lays the inputs end to end and cuts the stream into folders of at most (64 MiB - working tree -
margin) bytes, so the number of calls is the least possible; a file split across folders becomes numbered
parts. Each folder has the whole manifest (name, size, sha256 of every file and its parts), so `take` in any
order joins a file once all its parts are in the cache, checks size and checksum, and removes the parts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
CARRY_LIMIT = 64 * MIB
MANIFEST = "stage_manifest.json"


def default_inputs(shared: Path) -> list[Path]:
    """What the GPU work of the open issues reads, in the order it is needed: the training set (every training
    run), the test set (superres and LIFT evaluation), the FID Inception network (kept in ../shared as parts)."""
    return [shared / "data" / "cifar10-train.zip", shared / "data" / "cifar10-test.zip",
            *sorted((shared / "fid").glob("inception-fid-torchscript.pt.part.*"))]


def working_tree_bytes(repo: Path) -> int:
    """Bytes of the tracked and untracked-not-ignored files: what every device call carries anyway."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    return sum((repo / name).stat().st_size for name in out.decode().split("\0")
               if name and (repo / name).is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def joined_name(path: Path) -> str:
    """The file an input stands for: ../shared keeps the Inception network as .part.aa/.part.ab pieces."""
    name = path.name
    return name.split(".part.")[0] if ".part." in name else name


def plan(inputs: list[Path], capacity: int) -> list[list[tuple[Path, int, int, str]]]:
    """Folders of (source, offset, length, part name), each at most ``capacity`` bytes, inputs end to end."""
    folders, current, room = [], [], capacity
    for src in inputs:
        size, offset, index = src.stat().st_size, 0, 0
        while offset < size:
            if room == 0:
                folders.append(current)
                current, room = [], capacity
            length = min(room, size - offset)
            current.append((src, offset, length, f"{src.name}.stage{index:02d}"))
            offset, index, room = offset + length, index + 1, room - length
    if current:
        folders.append(current)
    return folders


def prepare(args) -> int:
    repo = Path(args.repo).resolve()
    shared = Path(args.shared).resolve()
    inputs = [Path(p) for p in args.inputs] if args.inputs else default_inputs(shared)
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        sys.exit(f"gpu_stage: input not found: {', '.join(missing)}")
    tree = working_tree_bytes(repo)
    capacity = CARRY_LIMIT - tree - int(args.margin_mib * MIB)
    if capacity < 4 * MIB:
        sys.exit(f"gpu_stage: the working tree is {tree / MIB:.1f} MiB; with the {args.margin_mib} MiB margin "
                 f"less than 4 MiB of a 64 MiB carry is left for staging")
    out = repo / args.out
    if out.exists():
        shutil.rmtree(out)
    folders = plan(inputs, capacity)
    manifest = {"files": {}}
    for src in inputs:
        entry = manifest["files"].setdefault(joined_name(src), {"pieces": []})
        entry["pieces"].append({"name": src.name, "size": src.stat().st_size, "sha256": sha256(src),
                                "parts": []})
    for number, folder in enumerate(folders, start=1):
        dest = out / str(number)
        dest.mkdir(parents=True)
        for src, offset, length, part in folder:
            with open(src, "rb") as f_in, open(dest / part, "wb") as f_out:
                f_in.seek(offset)
                remaining = length
                while remaining:
                    block = f_in.read(min(remaining, 8 * MIB))
                    f_out.write(block)
                    remaining -= len(block)
            piece = next(p for p in manifest["files"][joined_name(src)]["pieces"] if p["name"] == src.name)
            piece["parts"].append(part)
    for number in range(1, len(folders) + 1):
        (out / str(number) / MANIFEST).write_text(json.dumps(manifest, indent=1))
    print(f"working tree {tree / MIB:.1f} MiB; {len(folders)} folders of at most {capacity / MIB:.1f} MiB:")
    for number, folder in enumerate(folders, start=1):
        print(f"  {args.out}/{number}: " + ", ".join(f"{part} ({length / MIB:.1f} MiB)"
                                                     for _, _, length, part in folder))
    print(f"on the device, one call per folder, back to back: python3 scripts/gpu_stage.py take {args.out}/N")
    return 0


def take(args) -> int:
    folder, cache = Path(args.folder), Path(args.cache)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        sys.exit(f"gpu_stage: {manifest_path} not found (carry the folder that `prepare` wrote)")
    cache.mkdir(parents=True, exist_ok=True)
    for part in folder.iterdir():
        if part.name != MANIFEST:
            shutil.copyfile(part, cache / (part.name + ".tmp"))
            (cache / (part.name + ".tmp")).replace(cache / part.name)
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():
        target = cache / name
        all_parts = [cache / part for piece in entry["pieces"] for part in piece["parts"]]
        if target.exists():
            print(f"{target}: present")
            continue
        waiting = [p.name for p in all_parts if not p.exists()]
        if waiting:
            print(f"{target}: waiting for {len(waiting)} of {len(all_parts)} parts")
            continue
        for piece in entry["pieces"]:
            size = sum((cache / part).stat().st_size for part in piece["parts"])
            if size != piece["size"]:
                sys.exit(f"gpu_stage: {piece['name']}: parts hold {size} bytes, the manifest says {piece['size']}")
        tmp = cache / (name + ".tmp")
        with open(tmp, "wb") as f_out:
            for part in all_parts:
                with open(part, "rb") as f_in:
                    shutil.copyfileobj(f_in, f_out, 8 * MIB)
        offset = 0
        with open(tmp, "rb") as f:
            for piece in entry["pieces"]:
                h, remaining = hashlib.sha256(), piece["size"]
                while remaining:
                    block = f.read(min(remaining, MIB))
                    h.update(block)
                    remaining -= len(block)
                if h.hexdigest() != piece["sha256"]:
                    tmp.unlink()
                    sys.exit(f"gpu_stage: {piece['name']}: checksum differs from the manifest's; the parts are "
                             f"kept in {cache}: carry the folders again")
                offset += piece["size"]
        tmp.replace(target)
        for part in all_parts:
            part.unlink()
        print(f"{target}: joined ({offset / MIB:.1f} MiB, checksum ok)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="here: cut the inputs into carry-sized ignored folders")
    pp.add_argument("inputs", nargs="*", help="files to stage (default: ../shared's train zip, test zip and "
                    "Inception network parts)")
    pp.add_argument("--repo", default=".", help="the checkout whose working tree every call carries")
    pp.add_argument("--shared", default="../shared")
    pp.add_argument("--out", default=".gpu_stage", help="ignored folder (under --repo) for the numbered folders")
    pp.add_argument("--margin-mib", type=float, default=3.0,
                    help="room left for files the session adds before the calls (default 3)")
    pt = sub.add_parser("take", help="on the device: copy one folder's parts into the cache, join whole files")
    pt.add_argument("folder")
    pt.add_argument("--cache", default="/root/cache")
    args = p.parse_args(argv)
    return prepare(args) if args.command == "prepare" else take(args)


if __name__ == "__main__":
    sys.exit(main())
