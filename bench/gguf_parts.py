"""Bring a file larger than one transfer (the 98 MB SmolLM2 GGUF) to a machine in parts.

A GPU machine that cannot download and accepts at most 64 MiB of files per run gets the model
as parts under ``--max-mib`` (default 60) sent in separate runs, and joins them there; a
manifest holds every part's and the whole file's sha256, checked on join.

    python -m bench.gguf_parts split [FILE] OUT_DIR     # FILE: the installed SmolLM2 GGUF
    python -m bench.gguf_parts join PARTS_DIR OUT_FILE  # checks every sha256, then renames

Then ``python -m bench.quality_v3 --device cuda --model OUT_FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file behind the ``smollm2`` alias."""
    from smore_gnn.hf.loading import resolve_model_path

    directory, name = resolve_model_path("smollm2")
    return Path(directory) / str(name)


def split(source: Path, out_dir: Path, max_mib: float = 60.0) -> list[Path]:
    """Write ``source`` as ``<name>.part<k>`` files of at most ``max_mib`` MiB into ``out_dir``
    with ``manifest.json``; returns the part paths (send each with the manifest)."""
    size = int(max_mib * (1 << 20))
    if size <= 0:
        raise ValueError(f"max_mib must be > 0 (got {max_mib})")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with source.open("rb") as f:
        while block := f.read(size):
            part = out_dir / f"{source.name}.part{len(parts)}"
            part.write_bytes(block)
            parts.append(part)
    manifest = {
        "name": source.name,
        "size": source.stat().st_size,
        "sha256": _sha256(source),
        "parts": [{"file": p.name, "sha256": _sha256(p)} for p in parts],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return parts


def join(parts_dir: Path, out_file: Path) -> Path:
    """Check every part against the manifest, concatenate, check the whole; ``out_file``.

    Raises:
        FileNotFoundError: a part is missing. ValueError: a checksum differs.
    """
    manifest = json.loads((parts_dir / MANIFEST).read_text())
    for part in manifest["parts"]:
        path = parts_dir / part["file"]
        if not path.is_file():
            raise FileNotFoundError(f"Expected part {path} (missing); send it, then join again")
        if _sha256(path) != part["sha256"]:
            raise ValueError(f"Part {path} has the wrong sha256 (corrupt); send it again")
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tmp.open("wb") as out:
        for part in manifest["parts"]:
            out.write((parts_dir / part["file"]).read_bytes())
    if _sha256(tmp) != manifest["sha256"] or tmp.stat().st_size != manifest["size"]:
        tmp.unlink()
        raise ValueError(f"The joined {manifest['name']} has the wrong sha256; parts mismatch")
    tmp.replace(out_file)
    return out_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="write parts and a manifest")
    s.add_argument("paths", nargs="+", help="[FILE] OUT_DIR (FILE: the SmolLM2 GGUF)")
    s.add_argument("--max-mib", type=float, default=60.0)
    j = sub.add_parser("join", help="check and join parts")
    j.add_argument("parts_dir")
    j.add_argument("out_file")
    args = parser.parse_args(argv)
    if args.command == "split":
        if len(args.paths) > 2:
            parser.error("split takes [FILE] OUT_DIR")
        source = Path(args.paths[0]) if len(args.paths) == 2 else smollm2_gguf()
        for part in split(source, Path(args.paths[-1]), args.max_mib):
            print(f"{part} {part.stat().st_size} bytes")
    else:
        print(join(Path(args.parts_dir), Path(args.out_file)))


if __name__ == "__main__":
    main()
