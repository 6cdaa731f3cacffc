"""``python -m blockqnn.nasbench201 convert SRC OUT.csv``: an official NAS-Bench-201 / NATS-Bench topology file as
the table ``space=nasbench201`` reads (``space.table=OUT.csv``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from blockqnn.errors import UserError
from blockqnn.nasbench201.table import Converted, convert

DESCRIPTION = "Convert the official NAS-Bench-201 / NATS-Bench topology results into a table for space=nasbench201."
SRC_HELP = ("NAS-Bench-201-v1_[01]-*.pth, NATS-tss-v1_0-3ffb9.pickle.pbz2, or a NATS-tss-v1_0-3ffb9-simple/ (or "
            "-full/) folder")
COLUMNS_HELP = ("Columns: arch, then per dataset (cifar10, cifar100, imagenet16) <d>_test_acc (200 epochs, test "
                "set), <d>_val12_acc (12 epochs, validation set), <d>_train12_s (12 epochs' training seconds); "
                "accuracies in percent, each the mean over the file's seeds.")


def _parser() -> argparse.ArgumentParser:
    # As blockqnn.cli.prog, without importing Hydra: a conversion needs none.
    script = os.path.basename(sys.argv[0])
    prog = script if script.startswith("blockqnn-") else "python -m blockqnn.nasbench201"
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("convert", help="official results file -> CSV table", description=COLUMNS_HELP)
    command.add_argument("src", type=Path, help=SRC_HELP)
    command.add_argument("out", type=Path, help="the CSV file to write (replaced whole, once the source is read)")
    return parser


def _report(out: Path, done: Converted) -> str:
    lines = [f"wrote {out}: {done.architectures} architectures, columns {', '.join(done.columns)}"]
    lines += [f"note: {name} left out: {n} of {done.architectures} architectures lack it"
              for name, n in done.left_out.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        done = convert(args.src, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_report(args.out, done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
