"""Data-parallel training on CPU: 2 torchrun processes (gloo, 1 thread each) vs 1 process (2 threads).

Usage: .venv/bin/python benchmarks/bench_ddp.py [--n 1000] [--epochs 4] [--rounds 2] [--precision auto]
                                                [--procs 2] [--threads 2]

Both train the DCGAN ``stable`` preset (64 px, global batch 128) through ``python -m cxr_utils train`` on
``phantom:N``: one process with ``--threads`` intra-op threads, and ``torchrun --standalone
--nproc_per_node=--procs`` with ``--threads / --procs`` threads per process, the same global batch, so
the same total number of threads; and, to explain the difference, one process with ``--threads /
--procs`` threads (what each data-parallel process has). Runs alternate (1 x T, K x T/K, 1 x T/K, ...)
so that a load spike from other jobs hits all alike. Images/s are taken from the run's own
``stats.jsonl`` (``time_s`` is training wall time) from the last step of epoch 1 to the last step:
process start-up, data loading, the first epoch's warm-up and the final figures are excluded. Sample
grids and checkpoints are switched off in between. Prints each run's images/s, the medians, the
speed-ups and the 1-minute load average before and after. The machine may be shared: run it once, not
in a loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    later = [r for r in rows if r["epoch"] >= 2]
    first = rows[rows.index(later[0]) - 1]  # the last step of epoch 1: its time_s is the start
    return (later[-1]["kimg"] - first["kimg"]) * 1000 / (later[-1]["time_s"] - first["time_s"])


def run(procs: int, threads: int, args: argparse.Namespace, work: Path, name: str) -> float:
    train_args = ["-m", "cxr_utils", "train", "--preset", "stable", "--source", f"phantom:{args.n}",
                  "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--precision",
                  args.precision, "--sample-every", "1000", "--checkpoint-every", "1000", "--grid-epochs", "",
                  "--out", str(work / name), "--no-progress"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, *launcher, *train_args], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return images_per_second(work / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="phantom images")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs")
    parser.add_argument("--procs", type=int, default=2, help="torchrun processes")
    parser.add_argument("--threads", type=int, default=2, help="threads in total (split over the processes)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    args = parser.parse_args()
    per_proc = max(args.threads // args.procs, 1)
    setups = [(1, args.threads), (args.procs, per_proc), (1, per_proc)]
    results: dict[tuple[int, int], list[float]] = {s: [] for s in setups}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for procs, threads in setups:
                start = time.perf_counter()
                rate = run(procs, threads, args, work, f"p{procs}-t{threads}-r{r}")
                results[(procs, threads)].append(rate)
                print(f"round {r + 1}: {procs} process(es) x {threads} thread(s): {rate:.1f} images/s "
                      f"({time.perf_counter() - start:.0f} s wall, load {os.getloadavg()[0]:.1f})", flush=True)
    median = {s: statistics.median(v) for s, v in results.items()}
    for (procs, threads), rate in median.items():
        print(f"median: {procs} process(es) x {threads} thread(s): {rate:.1f} images/s")
    ddp, one = median[(args.procs, per_proc)], median[(1, args.threads)]
    print(f"speed-up of {args.procs} processes over 1 process with the same {args.threads} threads: {ddp / one:.2f}x; "
          f"over 1 process with {per_proc} thread(s): {ddp / median[(1, per_proc)]:.2f}x "
          f"(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)")


if __name__ == "__main__":
    main()
