"""``python -m blockqnn.report RUN_DIR``: what a search found, as pictures and one markdown page in the run folder.

For one search folder: the search curve (reward per candidate, running mean, epsilon stages shaded), the best
reward against the number of trained blocks, the learning curves (stops marked), a drawing of each top-k block and
``summary.md`` (top-k table, run settings, what stopping weak candidates saved, and the paper's analysis: how
often each layer type, multi-branch structure and shortcuts occur in the top-k against all sampled blocks). For a
multirun folder (Hydra sweep): each run's report, and the agents' best-so-far curves with their spread (Q-learning,
random search and regularized evolution at equal numbers of trained blocks); a run that cannot be read is left out
with a warning. Histories of every schema version this project wrote are read, read-only.
The pictures also go to the run's W&B run when it was tracked.
"""

from __future__ import annotations

import argparse
import sys

from blockqnn.cli import one_line_errors, prog
from blockqnn.report.summary import report

DESCRIPTION = """\
What a search found, written into its folder: the search curve, the best reward against trained blocks, the
learning curves (stops marked), a drawing of each top-k block and summary.md (top-k table, settings, what the good
blocks have in common). For a multirun folder: each run's report, and the agents compared at equal numbers of
trained blocks (agents.png, summary.md). Read-only on the histories: a running search may be reported."""
EPILOG = """examples:
  {prog} runs/search/2026-01-01_12-00-00
  {prog} runs/multirun/2026-01-01_12-00-00 --top-k 3

The same runs as a pandas DataFrame: blockqnn.history(RUN_DIR). Docs: docs/reporting.md and docs/analysis.md in
the repository."""


# ---- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("blockqnn.report"), description=DESCRIPTION,
                                     epilog=EPILOG.format(prog=prog("blockqnn.report")),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a search run folder, or a multirun folder holding several")
    parser.add_argument("--top-k", type=int, default=5, help="blocks to tabulate and draw (default 5)")
    parser.add_argument("--no-wandb", action="store_true", help="do not send the pictures to the run's W&B run")
    args = parser.parse_args(argv)
    with one_line_errors():
        written = report(args.run_dir, args.top_k, wandb=not args.no_wandb)
        for path in written:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
