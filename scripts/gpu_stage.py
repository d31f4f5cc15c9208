"""Stage big inputs for the device machine, one carry per call (docs/gpu_runbook.md).

A device call carries at most 64 MiB, and the working tree (tracked and untracked-not-ignored files) counts
towards it. The eighth session's staging folders were fixed by hand and one of them (test zip + half the
Inception network) stopped fitting once the repository grew; the failed call left the machine idle long enough
to go back, and a trained run was lost. This script measures the working tree and cuts the inputs to fit.

    python3 scripts/gpu_stage.py prepare                 # here: .gpu_stage/1, 2, ... each fits one carry
    python3 scripts/gpu_stage.py take .gpu_stage/2 --need cifar10-train.zip
                                                         # on the device: copy into /root/cache, join what is
                                                         # whole; exit 3 if the named file is not whole yet

The other way, a file bigger than one call brings back (a run folder to go on with in a later session):

    python3 scripts/gpu_stage.py give /root/run.tar $OUT --call K    # on the device: call K's share of the parts
    python3 scripts/gpu_stage.py gather DIR1 DIR2 ... --out run.tar  # here: the calls' $OUT folders, joined
    python3 scripts/gpu_stage.py prepare run.tar ...                 # and staged again for the next machine

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
MANIFEST_ROOM = 64 * 1024  # bytes of every folder's capacity kept for its copy of the manifest
# What one device call brings back: at most 8 files of 16 MiB, 64 MiB in all; `give` sends parts of 15 MiB, four
# a call, and its manifest (docs: the device tool's limits).
GIVE_PART = 15 * MIB
GIVE_PARTS_PER_CALL = 4


def default_inputs(shared: Path) -> list[Path]:
    """What the GPU work of the open issues reads, in the order it is needed: the training set (every training
    run), the test set (superres and LIFT evaluation), the FID Inception network (kept in ../shared as parts)."""
    inception = sorted((shared / "fid").glob("inception-fid-torchscript.pt.part.*"))
    if not inception:
        sys.exit(f"gpu_stage: no inception-fid-torchscript.pt.part.* in {shared / 'fid'}")
    return [shared / "data" / "cifar10-train.zip", shared / "data" / "cifar10-test.zip", *inception]


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


def in_join_order(inputs: list[Path]) -> list[Path]:
    """The inputs with the pieces of one file together and in name order (.part.aa before .part.ab, whatever
    order they were given in), files in the order of their first appearance."""
    groups: dict[str, list[Path]] = {}
    for src in inputs:
        groups.setdefault(joined_name(src), []).append(src)
    return [src for pieces in groups.values() for src in sorted(pieces, key=lambda p: p.name)]


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


def staging_folder(repo: Path, out: str) -> Path:
    """``--out`` as a folder strictly inside the checkout that git ignores: it is deleted and rewritten, and a
    folder that git does not ignore would travel with every call and overflow the carry."""
    path = (repo / out).resolve()
    if path == repo or repo not in path.parents:
        sys.exit(f"gpu_stage: --out {out!r} must be a folder inside {repo}, not the checkout or outside it")
    # A file inside: git matches a directory pattern (.gpu*/) only against a path it knows to be a folder.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path / MANIFEST)], cwd=repo).returncode == 0
    if not ignored:
        sys.exit(f"gpu_stage: --out {out!r} is not ignored by git; it would be carried with every call "
                 f"(name it .gpu_something: .gitignore ignores .gpu*/)")
    return path


def prepare(args) -> int:
    repo = Path(args.repo).resolve()
    shared = Path(args.shared).resolve()
    inputs = in_join_order([Path(p) for p in args.inputs] if args.inputs else default_inputs(shared))
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        sys.exit(f"gpu_stage: input not found: {', '.join(missing)}")
    out = staging_folder(repo, args.out)
    tree = working_tree_bytes(repo)
    # The manifest travels in every folder; files occupy whole filesystem blocks on the way (the margin).
    capacity = CARRY_LIMIT - tree - int(args.margin_mib * MIB) - MANIFEST_ROOM
    if capacity < 4 * MIB:
        sys.exit(f"gpu_stage: the working tree is {tree / MIB:.1f} MiB; with the {args.margin_mib} MiB margin "
                 f"less than 4 MiB of a 64 MiB carry is left for staging")
    if out.exists():
        shutil.rmtree(out)
    folders = plan(inputs, capacity)
    manifest = {"files": {}}
    for src in inputs:
        entry = manifest["files"].setdefault(joined_name(src), {"size": 0, "pieces": []})
        entry["size"] += src.stat().st_size
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
            piece["parts"].append([part, number])
    text = json.dumps(manifest, indent=1)
    if len(text) > MANIFEST_ROOM:
        sys.exit(f"gpu_stage: the manifest is {len(text)} bytes, more than the {MANIFEST_ROOM} kept for it")
    for number in range(1, len(folders) + 1):
        (out / str(number) / MANIFEST).write_text(text)
    print(f"working tree {tree / MIB:.1f} MiB; {len(folders)} folders of at most {capacity / MIB:.1f} MiB:")
    for number, folder in enumerate(folders, start=1):
        print(f"  {args.out}/{number}: " + ", ".join(f"{part} ({length / MIB:.1f} MiB)"
                                                     for _, _, length, part in folder))
    print(f"on the device, one call per folder, back to back: python3 scripts/gpu_stage.py take {args.out}/N "
          f"[--need FILE ...]")
    return 0


def take(args) -> int:
    """Copy the folder's parts of every file not yet whole in the cache, join each file whose parts are all
    there (size and sha256 of every piece checked), and report. Exit 1 when a joined file fails its checksum
    (the other files are still joined), 3 when a file named by --need is not whole yet."""
    folder, cache = Path(args.folder), Path(args.cache)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        sys.exit(f"gpu_stage: {manifest_path} not found (carry the folder that `prepare` wrote)")
    manifest = json.loads(manifest_path.read_text())
    unknown = [n for n in args.need if n not in manifest["files"]]
    if unknown:
        sys.exit(f"gpu_stage: --need {', '.join(unknown)}: not staged (the manifest has "
                 f"{', '.join(manifest['files'])})")
    cache.mkdir(parents=True, exist_ok=True)
    failed, whole = [], set()
    for name, entry in manifest["files"].items():
        target = cache / name
        parts = [(cache / part, number) for piece in entry["pieces"] for part, number in piece["parts"]]
        if target.exists() and target.stat().st_size == entry["size"]:
            for part, _ in parts:  # a folder carried again after the join: nothing to keep
                part.unlink(missing_ok=True)
            print(f"{target}: present")
            whole.add(name)
            continue
        if target.exists():
            print(f"{target}: {target.stat().st_size} bytes, the manifest says {entry['size']}: joined again")
        for part, _ in parts:
            if (folder / part.name).is_file():
                tmp = cache / (part.name + ".tmp")  # a part appears whole or not at all
                shutil.copyfile(folder / part.name, tmp)
                tmp.replace(part)
        waiting = [part.name for part, _ in parts if not part.exists()]
        if waiting:
            folders = sorted({number for part, number in parts if not part.exists()})
            print(f"{target}: waiting for {len(waiting)} of {len(parts)} parts (folders {folders})")
            continue
        error = join(name, entry, cache)
        if error:
            failed.append(error)
        else:
            whole.add(name)
    if failed:
        print("gpu_stage: " + "\n".join(failed), file=sys.stderr)
        return 1
    missing = [n for n in args.need if n not in whole]
    if missing:
        print(f"gpu_stage: not whole yet: {', '.join(missing)} (take the other folders first)", file=sys.stderr)
        return 3
    return 0


def join(name: str, entry: dict, cache: Path) -> str | None:
    """Join one file's parts into cache/name (atomically), checking each piece's size and sha256, and remove
    the parts. Returns None, or what is wrong (the parts are then kept, and the half-joined file removed)."""
    parts = [(cache / part, number) for piece in entry["pieces"] for part, number in piece["parts"]]
    for piece in entry["pieces"]:
        size = sum((cache / part).stat().st_size for part, _ in piece["parts"])
        if size != piece["size"]:
            return f"{piece['name']}: its parts hold {size} bytes, the manifest says {piece['size']}"
    tmp = cache / (name + ".tmp")
    with open(tmp, "wb") as f_out:
        for part, _ in parts:
            with open(part, "rb") as f_in:
                shutil.copyfileobj(f_in, f_out, 8 * MIB)
    with open(tmp, "rb") as f:
        for piece in entry["pieces"]:
            h, remaining = hashlib.sha256(), piece["size"]
            while remaining:
                block = f.read(min(remaining, MIB))
                h.update(block)
                remaining -= len(block)
            if h.hexdigest() != piece["sha256"]:
                tmp.unlink()
                folders = sorted({number for _, number in piece["parts"]})
                return (f"{piece['name']}: the joined parts' sha256 differs from the manifest's (parts kept in "
                        f"{cache}). Run `gpu_stage.py prepare` again and carry folders {folders} again")
    tmp.replace(cache / name)
    for part, _ in parts:
        part.unlink()
    print(f"{cache / name}: joined ({entry['size'] / MIB:.1f} MiB, checksum ok)")
    return None


def give_manifest_name(name: str) -> str:
    return f"{name}.give.json"


def give(args) -> int:
    """Write call ``--call``'s share of FILE's parts (GIVE_PARTS_PER_CALL of GIVE_PART bytes) and the manifest
    (size and sha256 of the file and of every part) into DEST. Exit 2 past the last call."""
    src, dest = Path(args.file), Path(args.dest)
    if not src.is_file():
        sys.exit(f"gpu_stage: give: {src} not found")
    size = src.stat().st_size
    parts = [(offset, min(GIVE_PART, size - offset)) for offset in range(0, size, GIVE_PART)] or [(0, 0)]
    calls = -(-len(parts) // GIVE_PARTS_PER_CALL)
    if not 1 <= args.call <= calls:
        print(f"gpu_stage: give: --call {args.call}: {src.name} ({size / MIB:.1f} MiB) takes calls 1 to {calls}",
              file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {"name": src.name, "size": size, "sha256": sha256(src), "calls": calls, "parts": []}
    first = (args.call - 1) * GIVE_PARTS_PER_CALL
    with open(src, "rb") as f:
        for index, (offset, length) in enumerate(parts):
            f.seek(offset)
            data = f.read(length)
            part = f"{src.name}.give{index:03d}"
            manifest["parts"].append({"name": part, "size": length, "sha256": hashlib.sha256(data).hexdigest()})
            if first <= index < first + GIVE_PARTS_PER_CALL:
                (dest / part).write_bytes(data)
    (dest / give_manifest_name(src.name)).write_text(json.dumps(manifest, indent=1))
    left = f"; next: --call {args.call + 1}" if args.call < calls else "; that was the last"
    print(f"{src.name}: parts {first} to {min(first + GIVE_PARTS_PER_CALL, len(parts)) - 1} of {len(parts)} in "
          f"{dest} (call {args.call} of {calls}{left})")
    return 0


def gather(args) -> int:
    """Join the parts that ``give`` wrote into the calls' folders (any order; each holds the manifest): every
    part's size and sha256 and the whole file's are checked; the file is written atomically. Exit 3 and name
    the calls still missing when a part is not there, 1 when a part or the whole is corrupt."""
    dirs = [Path(d) for d in args.dirs]
    manifests = sorted({m for d in dirs for m in d.glob("*.give.json")})
    names = {json.loads(m.read_text())["name"] for m in manifests}
    if len(names) != 1:
        sys.exit(f"gpu_stage: gather: the folders hold the manifests of {sorted(names) or 'no file'}; "
                 "give them the folders of one file's calls")
    manifest = json.loads(manifests[0].read_text())
    found = {p.name: p for d in dirs for p in d.glob(f"{manifest['name']}.give*") if not p.name.endswith(".json")}
    missing = [i for i, part in enumerate(manifest["parts"]) if part["name"] not in found]
    if missing:
        calls = sorted({i // GIVE_PARTS_PER_CALL + 1 for i in missing})
        print(f"gpu_stage: gather: {manifest['name']}: {len(missing)} of {len(manifest['parts'])} parts missing "
              f"(give --call {', '.join(map(str, calls))})", file=sys.stderr)
        return 3
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    whole = hashlib.sha256()
    with open(tmp, "wb") as f_out:
        for part in manifest["parts"]:
            data = found[part["name"]].read_bytes()
            if len(data) != part["size"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                f_out.close()
                tmp.unlink()
                print(f"gpu_stage: gather: {found[part['name']]}: size or sha256 differs from the manifest's "
                      f"(bring that call back again)", file=sys.stderr)
                return 1
            whole.update(data)
            f_out.write(data)
    if whole.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        print(f"gpu_stage: gather: {manifest['name']}: the joined file's sha256 differs from the manifest's",
              file=sys.stderr)
        return 1
    tmp.replace(out)
    print(f"{out}: joined from {len(manifest['parts'])} parts ({manifest['size'] / MIB:.1f} MiB, checksum ok)")
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
    pt.add_argument("--need", nargs="+", default=[], metavar="FILE",
                    help="exit 3 unless these files (joined names, e.g. cifar10-train.zip) are whole afterwards, "
                         "so `take ... --need X && train ...` does not start without its data")
    pg = sub.add_parser("give", help="on the device: one call's share of a big file's parts, into $OUT")
    pg.add_argument("file")
    pg.add_argument("dest", help="the folder whose files the call brings back ($OUT)")
    pg.add_argument("--call", type=int, required=True, metavar="K",
                    help="1, 2, ...: which share (exit 2 past the last)")
    pj = sub.add_parser("gather", help="here: join the parts that `give` brought back over several calls")
    pj.add_argument("dirs", nargs="+", help="the calls' folders (where their files landed)")
    pj.add_argument("--out", required=True, help="the joined file")
    args = p.parse_args(argv)
    return {"prepare": prepare, "take": take, "give": give, "gather": gather}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
