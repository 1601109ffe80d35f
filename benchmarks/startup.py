"""Start-up time: ``import mmgen``, ``import pipelines`` and ``mmgen --help`` against ``import torch``.

A user pays start-up on every script and every ``mmgen`` command, so it is measured as they meet it:
each command in a fresh interpreter (``python -c ...``), the commands interleaved round by round (the
order rotated each round, so a busy neighbour slows them alike), after one unrecorded round that warms
the file cache. Prints the median wall time of each and its difference to ``import torch`` as a markdown
table. The last row is the first use of a model class (``mmgen.GPT``), where diffusers is imported now.

    python benchmarks/startup.py               # median of 10
    python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import mmgen": ["-c", "import mmgen"],
    "import pipelines": ["-c", "import pipelines"],
    "mmgen --help": ["-m", "mmgen.app.cli", "--help"],
    "import mmgen; mmgen.GPT": ["-c", "import mmgen; mmgen.GPT"],
}
BASELINE = "import torch"


def timed(args: list[str]) -> float:
    """Wall seconds of one fresh interpreter running ``args``; a failing command stops the benchmark."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="recorded rounds (default 10)")
    args = parser.parse_args()

    names = list(COMMANDS)
    for name in names:  # warm-up round: the file cache, not the interpreter, is what it warms
        timed(COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(timed(COMMANDS[name]))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"# start-up: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"torch {metadata.version('torch')}, diffusers {metadata.version('diffusers')}, "
          f"median of {args.repeats} fresh interpreters, interleaved")
    print(f"| command | median s | min s | max s | minus `{BASELINE}` s |")
    print("|---|---|---|---|---|")
    for name in names:
        values = times[name]
        print(f"| `{name}` | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{medians[name] - medians[BASELINE]:+.2f} |")


if __name__ == "__main__":
    main()
