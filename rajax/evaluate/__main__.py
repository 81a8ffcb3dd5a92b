"""python -m rajax.evaluate --config configs/eval/NAME.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...] [--only a,b]"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  from rajax import config as config_lib
  from rajax import evaluate

  parser = argparse.ArgumentParser(
      prog="python -m rajax.evaluate", description=evaluate.__doc__.split("\n\n")[0],
      epilog="Override any config field with --config.FIELD=VALUE, e.g. --config.processors.ra=runs/sr_ra.")
  parser.add_argument("--config", required=True, help="evaluation config file, optionally with an argument: FILE.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="directory for the tables, figures and the prediction cache")
  parser.add_argument("--only", default="", help="comma-separated evaluator names to run (default: all in config.evals)")
  args, rest = parser.parse_known_args(argv)
  overrides = config_lib.overrides_from_args(parser, rest, "batch_size=64")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    config = config_lib.override(config_lib.load(args.config), overrides)
    evaluate.validate(config)
    config.lock()
  except (config_lib.ConfigError, evaluate.EvalError) as e:
    parser.exit(2, f"rajax.evaluate: {e}\n")
  only = [n.strip() for n in args.only.split(",") if n.strip()] or None
  try:
    evaluate.run(config, args.workdir, only=only)
  except (evaluate.EvalError, evaluate.TargetError) as e:
    parser.exit(2, f"rajax.evaluate: {e}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
