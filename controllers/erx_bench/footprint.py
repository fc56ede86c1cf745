"""Cold `./erx up`: wall time, and resident memory per component once everything is healthy.

    ERX_HOME=/tmp/erx-cold .erx/venv/main/bin/python -m erx_bench.footprint [--keep]

Runs `./erx up` on the given state directory (it should be empty, for a cold start; installed
environments are reused), reads every deployment's pid records (`*/run/*.json`) and sums the RSS of
each process tree. Stops everything again unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total_kib, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
            pending += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total_kib / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the system running")
    args = parser.parse_args()
    home = Path(os.environ.get("ERX_HOME", REPO / ".erx"))
    started = time.monotonic()
    up = subprocess.run([str(REPO / "erx"), "up"], capture_output=True, text=True)
    seconds = time.monotonic() - started
    if up.returncode != 0:
        print(up.stderr[-3000:], file=sys.stderr)
        return 1
    rows = {}
    for record in sorted(home.rglob("run/*.json")):
        rec = json.loads(record.read_text())
        rows[f"{record.parent.parent.name}/{rec['name']}"] = rss_mib(rec["pid"])
    print(f"cold ./erx up: {seconds:.1f} s (state {home})")
    for name, mib in rows.items():
        print(f"  {name:<40} {mib:7.1f} MiB")
    print(f"  {'total':<40} {sum(rows.values()):7.1f} MiB")
    if not args.keep:
        subprocess.run([str(REPO / "erx"), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
