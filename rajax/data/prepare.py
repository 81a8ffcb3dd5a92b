"""Writes TFDS ArrayRecord datasets from the official archives, without TensorFlow.

    python -m rajax.data.prepare imagenet2012 --manual_dir ~/downloads/imagenet --data_dir ~/tfds
    python -m rajax.data.prepare imagenet_c --manual_dir ~/downloads/imagenet-c --data_dir ~/tfds \\
        [--configs fog_3,snow_5]
    python -m rajax.data.prepare voc --manual_dir ~/downloads/voc --data_dir ~/tfds [--configs 2007]
    python -m rajax.data.prepare coco --manual_dir ~/downloads/coco --data_dir ~/tfds
    python -m rajax.data.prepare voc_seg --manual_dir ~/downloads/voc --data_dir ~/tfds   # + benchmark.tgz: train_aug
    python -m rajax.data.prepare cityscapes --manual_dir ~/downloads/cityscapes --data_dir ~/tfds
    python -m rajax.data.prepare cub200 --manual_dir ~/downloads/cub --data_dir ~/tfds            # CUB_200_2011.tgz
    python -m rajax.data.prepare stanford_cars --manual_dir ~/downloads/cars --data_dir ~/tfds    # devkit + tgzs
    python -m rajax.data.prepare folder --manual_dir ~/my_photos --data_dir ~/tfds --name my_photos

Then train or evaluate with --config.data.data_dir=~/tfds --config.data.name=NAME[/CONFIG]; read
a dataset directly with `tfds.data_source("imagenet2012:5.1.0", data_dir=...)` (name:version) or
`rajax.data.tfds_source("imagenet2012", split="validation", data_dir=...)`.

The archives each builder expects are listed in rajax/data/builders.py. A dataset that is already
complete in data_dir is left as it is unless --overwrite is given. Files that are not images are
skipped and counted in the log; nothing else is changed in the images.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from typing import Sequence

from rajax.data import builders
from rajax.data.sources import DataError

NAMES = tuple(builders.BUILDERS)


def _configs(name: str, manual_dir: pathlib.Path, requested: str) -> list[str | None]:
  """The builder configs to prepare: the requested ones, or every one whose data is in manual_dir."""
  if name in ("imagenet2012", "folder", "voc_seg", "cityscapes", "cub200", "stanford_cars"):
    if requested:
      raise DataError(f"{name} has no configs; drop --configs.")
    return [None]
  known = [c.name for c in builders.BUILDERS[name].BUILDER_CONFIGS]
  if requested:
    chosen = [c.strip() for c in requested.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
      raise DataError(f"Unknown {name} config(s) {', '.join(unknown)}; known: {', '.join(known)}.")
    return chosen
  if name == "coco":  # one config; its builder says which zips are missing
    return known
  if name == "imagenet_c":
    found = builders.imagenet_c_files(manual_dir.resolve())
    chosen = [f"{c}_{s}" for c, s in sorted(found, key=lambda k: (builders.IMAGENET_C_CORRUPTIONS.index(k[0]), k[1]))]
  else:  # voc
    trees = {y: builders._VocTree(manual_dir, y) for y in known}
    chosen = [y for y in known if any(trees[y].image_set(s) is not None for s in ("train", "val", "test"))]
  if not chosen:
    raise DataError(f"No {name} data found in {manual_dir}. {builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return chosen


def prepare(name: str, manual_dir: str, data_dir: str, *, configs: str = "", dataset_name: str = "",
            overwrite: bool = False) -> list[str]:
  """Prepares dataset `name` (all configs found, or `configs`); returns the written dataset directories."""
  import tensorflow_datasets as tfds

  if name not in builders.BUILDERS:
    raise DataError(f"Unknown dataset {name!r}; one of {', '.join(NAMES)}.")
  manual = pathlib.Path(manual_dir).expanduser()
  if not manual.is_dir() or not any(manual.iterdir()):
    raise DataError(f"--manual_dir {manual} is not a directory or is empty. "
                    f"{builders.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if name == "folder":
    cls = builders.image_folder_builder(dataset_name or "folder", manual)
  else:
    if dataset_name:
      raise DataError(f"--name only applies to folder datasets; {name} is always called {name}.")
    cls = builders.BUILDERS[name]
  written = []
  for config in _configs(name, manual, configs):
    builder = cls(data_dir=str(pathlib.Path(data_dir).expanduser()), file_format="array_record",
                  **({"config": config} if config else {}))
    label = builder.name + (f"/{config}" if config else "")
    if builder.is_prepared() and not overwrite:
      print(f"rajax.data.prepare: {label} is already prepared in {builder.data_dir}; --overwrite rewrites it.",
            flush=True)
      written.append(str(builder.data_dir))
      continue
    start = time.perf_counter()
    print(f"rajax.data.prepare: writing {label} to {builder.data_dir} ...", flush=True)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite:
      mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), download_mode=mode))
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"rajax.data.prepare: {label} done in {time.perf_counter() - start:.0f}s ({splits})", flush=True)
    written.append(str(builder.data_dir))
  return written


def cli(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.data.prepare", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", choices=NAMES, help="which dataset to write")
  parser.add_argument("--manual_dir", required=True, help="directory holding the downloaded archives (or folders)")
  parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
  parser.add_argument("--configs", default="", help="comma-separated configs (imagenet_c: fog_3,...; voc: 2007,2012; coco: 2017); "
                      "default: every one found in manual_dir")
  parser.add_argument("--name", default="", dest="dataset_name", help="dataset name for 'folder' (default: folder)")
  parser.add_argument("--overwrite", action="store_true", help="rewrite datasets that are already prepared")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    prepare(args.name, args.manual_dir, args.data_dir, configs=args.configs, dataset_name=args.dataset_name,
            overwrite=args.overwrite)
  except DataError as e:
    print(f"rajax.data.prepare: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(cli())
