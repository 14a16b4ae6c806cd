#!/usr/bin/env python3
"""Run a command and fail when it changed any file under the given paths.

    python scripts/check_unchanged.py --why "..." PATH... -- CMD [ARG...]

`make test` uses it to prove that the notebooks and the generated code agree (nbdev_export changes nothing)
and that the notebooks are clean (nbdev_clean changes nothing). It compares file contents before and after,
so it works the same in a fresh clone and in a working tree with uncommitted edits.
"""
import argparse, hashlib, subprocess, sys
from pathlib import Path


def snapshot(paths):
    out = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            if "__pycache__" in f.parts or ".ipynb_checkpoints" in f.parts: continue
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv: sys.exit("usage: check_unchanged.py [--why TEXT] PATH... -- CMD [ARG...]")
    i = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--why", default="the command changed files it should not have")
    ap.add_argument("paths", nargs="+")
    a, cmd = ap.parse_args(argv[:i]), argv[i + 1:]
    before = snapshot(a.paths)
    rc = subprocess.call(cmd)
    if rc: sys.exit(f"{' '.join(cmd)} failed with exit code {rc}")
    after = snapshot(a.paths)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    if changed or added or removed:
        for label, names in (("changed", changed), ("added", added), ("removed", removed)):
            for n in names: print(f"  {label}: {n}", file=sys.stderr)
        sys.exit(f"{' '.join(cmd)}: {a.why}")
    print(f"{' '.join(cmd)}: nothing changed under {' '.join(a.paths)}")


if __name__ == "__main__":
    main()
