"""Start-up time of the command line: ``mammobench --help`` and every ``<command> --help``.

    python benchmarks/bench_cli.py [--repeats 5]

Each command runs in a fresh process, alternating with a bare ``python -c pass`` (the interpreter's own
start-up, the floor) in the same run; prints the median wall time of each. Target: under 1 s each.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = [["--help"], ["--version"], ["presets"], ["prepare", "--help"], ["train", "--help"], ["evaluate", "--help"],
            ["compare", "--help"], ["crossval", "--help"], ["ablate", "--help"], ["explain", "--help"],
            ["export", "--help"], ["predict", "--help"], ["serve", "--help"], ["keygen", "--help"]]


def _time(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bare = [sys.executable, "-c", "pass"]
    rows = []
    for words in COMMANDS:
        cli = [sys.executable, "-m", "mammobench.cli", *words]
        _time(cli)  # warm the file cache
        ours, floor = [], []
        for _ in range(args.repeats):
            ours.append(_time(cli))
            floor.append(_time(bare))
        rows.append((" ".join(words), statistics.median(ours), statistics.median(floor)))
    print(f"# CLI start-up - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, median of {args.repeats}")
    print("| mammobench ... | wall time (s) | bare python -c pass (s) |")
    print("|---|---|---|")
    for name, ours_s, floor_s in rows:
        print(f"| {name} | {ours_s:.2f} | {floor_s:.2f} |")


if __name__ == "__main__":
    main()
