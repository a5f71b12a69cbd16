"""Bench the code at a git revision ("before") and the working tree ("after") in one run on one machine.

    python tools/bench_before_after.py REV [--rounds 3] -- BENCH ARGS...
    python tools/bench_before_after.py a4b08bf --rounds 3 -- --presets default --resolutions 128,256 --threads 1

Checks REV out into a temporary git worktree, then runs ``python -m portrait_core bench --json BENCH ARGS`` from
the two trees alternately (before, after, before, after, ...: a busy machine slows both alike), each in its own
process, and prints one table: per row the median over rounds of the warm bake, the frame median and the peak
memory, before and after, and the ratio. The same Python (this one) runs both, so both use the same packages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = ("preset", "mode", "resolution", "rays", "threads", "amp")


def bench(tree: Path, args: list[str]) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "portrait_core", "bench", "--json", *args], cwd=tree, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="git revision of the 'before' column")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(own)
    runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="busto-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), args.rev], cwd=ROOT, check=True)
        try:
            for r in range(args.rounds):
                for name, tree in (("before", before), ("after", ROOT)):
                    runs[name].append(bench(tree, bench_args))
                    print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    rows = []
    for i, row in enumerate(runs["after"][0]):
        med = {name: {k: statistics.median(run[i][k] for run in runs[name])
                      for k in ("bake_warm_s", "frame_median_s", "peak_memory_mb")} for name in runs}
        rows.append([*(str(row[k]) for k in KEY),
                     f"{med['before']['bake_warm_s']:.3f}", f"{med['after']['bake_warm_s']:.3f}",
                     f"{med['before']['bake_warm_s'] / med['after']['bake_warm_s']:.2f}x",
                     f"{1000 * med['before']['frame_median_s']:.1f}", f"{1000 * med['after']['frame_median_s']:.1f}",
                     f"{med['before']['frame_median_s'] / med['after']['frame_median_s']:.2f}x",
                     f"{med['before']['peak_memory_mb']:.0f}", f"{med['after']['peak_memory_mb']:.0f}"])
    head = [*KEY, "bake before s", "bake after s", "bake ratio", "frame before ms", "frame after ms", "frame ratio",
            "peak before MB", "peak after MB"]
    print(f"before = {args.rev}, after = working tree; medians of {args.rounds} alternating rounds; bench "
          f"{' '.join(bench_args)}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
