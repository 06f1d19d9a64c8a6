"""`python -m rto.report <folder>`: see rto/report/__init__.py."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

from rto.errors import UserError
from rto.report import __doc__ as DOC
from rto.report import write_report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.report", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun folder (outputs/<task>/multiruns/<time>) or a verdict folder")
    parser.add_argument("--out", type=Path, help="where to write (default: <folder>/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        write_report(args.folder, args.out)
    except UserError as err:  # the folder holds no run: one line, no traceback (our own bugs keep theirs)
        parser.exit(1, f"Error ({err.kind}): {err}\n")


if __name__ == "__main__":
    main()
