"""The benchmark suite as a script: the same function as ``ray-sched bench``.

    .venv/bin/python benchmarks/run.py --suite quick [--out DIR] [--scenarios a,b]
                                       [--policies p,q] [--loads 0.5,0.85]

Writes benchmarks/results/<date>/bench-<suite>/{summary.csv,report.md} (and each cell's
replay files under <scenario>/load-<L>/<policy>/); see ``ray_sched.bench``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_sched.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
