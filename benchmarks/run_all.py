"""Every benchmark in one go: input pipeline, training step, evaluation, peak memory of a smoke
training run, G's exported formats, and the CamVid quality tables.

Prints the date and the machine, then each benchmark's figures as it finishes, and writes them
all to ``benchmarks/results/run_all.json`` (``run_all_quick.json`` with ``--quick``). The quality
tables are read from the result files of ``quality_camvid.py``: each kept table that has results
(the CPU table, its check at 1600 iterations, the GPU table), with its plot redrawn. Training
happens only with ``--quality``, which runs whatever of the CPU table's 16 runs is missing
(about 75 minutes on an idle 2-core CPU when none is done) and prints that table.

    python benchmarks/run_all.py [--quick] [--gpu] [--quality]

``--quick`` finishes in a few minutes on a 2-core CPU. ``--gpu`` measures training at the
paper's setting (crop 321, batch 10) on a GPU, with and without mixed precision and XLA,
instead of the CPU setting.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import bench_eval
import bench_export
import bench_memory
import bench_pipeline
import bench_train
import camvid_report
import camvid_results
import quality_camvid
from machine_info import machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def benchmarks(quick: bool, gpu: bool) -> dict[str, Callable[[], dict]]:
    """{name: a call returning its figures}, in the order they run."""
    return {
        "pipeline": lambda: bench_pipeline.run(quick),
        "train": lambda: bench_train.run(quick, gpu),
        "eval": lambda: bench_eval.run(quick),
        "memory": lambda: bench_memory.run(quick),
        "export": lambda: bench_export.run(quick),
    }


def print_figures(figures: dict, indent: int = 2) -> None:
    """One line per figure, nested dicts indented; floats to 4 significant digits."""
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"{' ' * indent}{key}:")
            print_figures(value, indent + 2)
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{' ' * indent}{key}: {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick (a few minutes in all)")
    parser.add_argument("--gpu", action="store_true", help="training at crop 321, batch 10, +/- mixed precision and XLA")
    parser.add_argument("--quality", action="store_true", help="train the quality table's missing runs first (long)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"run_all.py{' --quick' if args.quick else ''}{' --gpu' if args.gpu else ''}, "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}", flush=True)  # fmt: skip
    results: dict[str, dict] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
    }
    failed = []
    for name, run in benchmarks(args.quick, args.gpu).items():
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            figures = run()
        except (Exception, SystemExit) as error:  # a benchmark's failure must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            figures = {"error": f"{type(error).__name__}: {error}"}
        figures["benchmark_seconds"] = time.perf_counter() - start
        print_figures(figures)
        results[name] = figures
    print("\n== quality: CamVid val mean IoU ==", flush=True)
    if args.quality:
        try:
            quality_camvid.main([])  # trains the missing runs, then prints the table
        except SystemExit as error:  # raised when some run failed; the others' results stand
            print(error)
            failed.append("quality")
    else:
        print(camvid_report.kept_reports())
    total = time.perf_counter() - started
    results["total_seconds"] = total
    output = RESULTS_DIR / f"run_all{'_quick' if args.quick else ''}{'_gpu' if args.gpu else ''}.json"
    camvid_results.write_json_atomically(output, results)
    print(f"\nall benchmarks: {total / 60:.1f} min; figures in {output.relative_to(RESULTS_DIR.parent.parent)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
