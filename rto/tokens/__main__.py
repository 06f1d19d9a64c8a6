"""`python -m rto.tokens <run folder>`: write the run's token page (see `rto.tokens`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import rto.tokens
from rto.errors import UserError
from rto.tokens.page import PAGE, write_page


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rto.tokens", description=rto.tokens.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a finished run folder (outputs/rto/runs/<time>)")
    parser.add_argument("--n-prompts", type=int, default=8, help="the first N prompts of the run's eval.prompt_set on the page (default 8)")
    parser.add_argument("--out", type=Path, help=f"where to write the page (default <folder>/{PAGE})")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the page to the run's W&B run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.n_prompts < 1:
        sys.exit("error: --n-prompts must be >= 1")
    try:
        out = write_page(args.folder, args.n_prompts, args.out, use_wandb=not args.no_wandb)
    except UserError as err:  # a folder that is no run, a stage the run lacks: one line, no traceback
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
