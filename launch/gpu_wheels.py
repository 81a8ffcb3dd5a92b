#!/usr/bin/env python3
"""The wheels a GPU machine lacks for `python -m rajax.bench`: pinned, fetched, checked, installed.

    python3 launch/gpu_wheels.py fetch .whl                    # download the pinned wheels, check their sha256
    python3 launch/gpu_wheels.py verify .whl                   # check them only (no network)
    python3 launch/gpu_wheels.py install --target SITE .whl    # on the GPU machine: install what does not import
    python3 launch/gpu_wheels.py install --dry-run .whl        # what install would do with this python
    python3 launch/gpu_wheels.py pin --python 3.12 .whl        # re-pin the list's requirements (new files, sha256)
    python3 launch/gpu_wheels.py pin .whl grain==0.2.18=grain ...   # pin these REQUIREMENT=MODULE instead

The pin list (launch/gpu_wheels.txt, or --pins FILE) holds one wheel a line: requirement, the module it
provides, file name, size in bytes, sha256. `install` first imports each module with the interpreter
that will run the benchmark (--python, default this one) and installs only the wheels whose module does
not import, with `pip install --no-index --no-deps --target SITE` (or by unpacking them where that
python has no pip); then it imports every pinned module again with PYTHONPATH=SITE and checks that the
machine's own jax, numpy, flax, ... still come from the machine, not from SITE. `launch/bench_gpu.sh
--wheels DIR` runs that step before its first benchmark.

Standard library only: it runs before anything is installed. Exit status 0 when all is well, 1 when a
wheel is missing, corrupt or does not install, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Iterable, Sequence

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PINS = HERE / "gpu_wheels.txt"
DEFAULT_PYTHON = "3.12"
# Tags pip may accept for the GPU machine (glibc-based x86_64 Linux), newest first.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# What the machine brings and a wheel from the list must never replace (checked after installing).
MACHINE_OWN = ("jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax.checkpoint", "chex", "ml_dtypes", "PIL")


class WheelError(Exception):
  """A pinned wheel is missing, corrupt, not for this interpreter, or does not install."""


@dataclasses.dataclass(frozen=True)
class Pin:
  requirement: str   # name==version
  module: str        # what `import` finds when the package is installed
  file: str          # the wheel's file name
  size: int          # bytes
  sha256: str

  @property
  def python_tag(self) -> str:
    """The wheel's interpreter tag, e.g. 'cp312' or 'py3' (file name: name-ver-PY-ABI-PLATFORM.whl)."""
    return self.file[:-len(".whl")].split("-")[-3]


def read_pins(path: pathlib.Path | str = DEFAULT_PINS) -> list[Pin]:
  """The pin list at `path`: one `requirement module file size sha256` a line; '#' starts a comment."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise WheelError(f"No pin list at {path}; pass --pins FILE or restore launch/gpu_wheels.txt.")
  pins, seen = [], set()
  for n, line in enumerate(path.read_text().splitlines(), 1):
    words = line.split("#", 1)[0].split()
    if not words:
      continue
    if len(words) != 5 or "==" not in words[0] or not words[3].isdigit() or len(words[4]) != 64:
      raise WheelError(f"{path}:{n}: expected 'name==version module file.whl bytes sha256', got {line.strip()!r}.")
    pin = Pin(words[0], words[1], words[2], int(words[3]), words[4].lower())
    name = _norm(pin.requirement.split("==")[0])
    if name in seen:
      raise WheelError(f"{path}:{n}: {name} is pinned twice; keep one version of each.")
    if not pin.file.endswith(".whl") or not _norm(pin.file.split("-")[0]) == name:
      raise WheelError(f"{path}:{n}: {pin.file} is not a wheel of {pin.requirement}.")
    seen.add(name)
    pins.append(pin)
  return pins


def _norm(name: str) -> str:
  return name.lower().replace("-", "_").replace(".", "_")


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify(pins: Sequence[Pin], wheel_dir: pathlib.Path | str) -> int:
  """Checks that every pinned wheel is in `wheel_dir` with its size and sha256; returns the total bytes."""
  wheel_dir = pathlib.Path(wheel_dir)
  fix = f"fetch them again: python3 launch/gpu_wheels.py fetch {wheel_dir}"
  if not wheel_dir.is_dir():
    raise WheelError(f"No wheel directory {wheel_dir}; {fix}")
  problems = []
  for pin in pins:
    path = wheel_dir / pin.file
    if not path.is_file():
      problems.append(f"{pin.file} is missing")
    elif path.stat().st_size != pin.size or _sha256(path) != pin.sha256:
      problems.append(f"{pin.file} does not match its pinned sha256 (corrupt or another build)")
  if problems:
    raise WheelError(f"{wheel_dir}: " + "; ".join(problems) + f"; {fix}")
  return sum(p.size for p in pins)


def _pip_download_args(python: str, wheel_dir: pathlib.Path, requirements: Iterable[str]) -> list[str]:
  args = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "-d", str(wheel_dir)]
  for p in PLATFORMS:
    args += ["--platform", p]
  return args + list(requirements)


def fetch(pins: Sequence[Pin], wheel_dir: pathlib.Path | str, *, python: str = DEFAULT_PYTHON,
          pip_args: Sequence[str] = ()) -> int:
  """Downloads the pinned wheels that `wheel_dir` lacks (or holds corrupt), then verifies all of them."""
  wheel_dir = pathlib.Path(wheel_dir)
  wheel_dir.mkdir(parents=True, exist_ok=True)
  todo = [p for p in pins if not (wheel_dir / p.file).is_file() or _sha256(wheel_dir / p.file) != p.sha256]
  for p in todo:
    (wheel_dir / p.file).unlink(missing_ok=True)
  if todo:
    r = subprocess.run(_pip_download_args(python, wheel_dir, [p.requirement for p in todo]) + list(pip_args))
    if r.returncode:
      raise WheelError(f"pip download failed (exit {r.returncode}) for {', '.join(p.requirement for p in todo)}.")
    strays = [p for p in todo if not (wheel_dir / p.file).is_file()]
    if strays:
      got = sorted(f.name for f in wheel_dir.glob("*.whl") if f.name not in {p.file for p in pins})
      raise WheelError(f"pip fetched {got} instead of the pinned {[p.file for p in strays]}; re-pin with "
                       f"python3 launch/gpu_wheels.py pin --python {python} {wheel_dir}")
  return verify(pins, wheel_dir)


def pin(requirements: Sequence[tuple[str, str]], wheel_dir: pathlib.Path | str, *, python: str = DEFAULT_PYTHON,
        pip_args: Sequence[str] = ()) -> list[Pin]:
  """Downloads each (requirement, module) for `python` into `wheel_dir`; returns their pins."""
  wheel_dir = pathlib.Path(wheel_dir)
  pins = []
  for req, module in requirements:
    with tempfile.TemporaryDirectory(dir=wheel_dir.parent if wheel_dir.parent.is_dir() else None) as tmp:
      r = subprocess.run(_pip_download_args(python, pathlib.Path(tmp), [req]) + list(pip_args))
      files = list(pathlib.Path(tmp).glob("*.whl"))
      if r.returncode or len(files) != 1:
        raise WheelError(f"pip download of {req} for Python {python} failed (exit {r.returncode}, {len(files)} wheels).")
      wheel_dir.mkdir(parents=True, exist_ok=True)
      path = wheel_dir / files[0].name
      shutil.move(str(files[0]), path)
    pins.append(Pin(req, module, path.name, path.stat().st_size, _sha256(path)))
  return pins


def write_pins(pins: Sequence[Pin], path: pathlib.Path | str, header: str = "") -> None:
  width = max(len(p.requirement) for p in pins)
  mwidth = max(len(p.module) for p in pins)
  lines = [f"{p.requirement:{width}s} {p.module:{mwidth}s} {p.file} {p.size} {p.sha256}" for p in pins]
  pathlib.Path(path).write_text(header + "\n".join(lines) + "\n")


def _header(path: pathlib.Path) -> str:
  """The leading comment block of an existing pin list, kept when it is rewritten."""
  if not path.is_file():
    return ""
  lines = []
  for line in path.read_text().splitlines():
    if not line.startswith("#"):
      break
    lines.append(line + "\n")
  return "".join(lines)


# --------------------------------------------------------------------------- installing

# argv: modules to import, then "--locate", then modules only to find (where from, which version) without
# importing them: the machine's own, which take seconds to import and are not what is being checked.
_IMPORT_CHECK = r"""
import importlib, importlib.metadata, importlib.util, json, sys
out, args = {}, sys.argv[1:]
cut = args.index("--locate") if "--locate" in args else len(args)
for name in args[:cut]:
  try:
    m = importlib.import_module(name)
    out[name] = {"ok": True, "file": getattr(m, "__file__", None), "version": str(getattr(m, "__version__", ""))}
  except BaseException as e:  # a broken package may raise anything, SystemExit included
    out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
owners = importlib.metadata.packages_distributions() if args[cut + 1:] else {}
for name in args[cut + 1:]:
  try:
    spec = importlib.util.find_spec(name)
  except BaseException:
    spec = None
  dists = owners.get(name.split(".")[0], [])
  try:
    version = importlib.metadata.version(dists[0]) if dists else ""
  except importlib.metadata.PackageNotFoundError:
    version = ""
  out[name] = ({"ok": True, "file": spec.origin, "version": version} if spec is not None else
               {"ok": False, "error": "not found"})
print(json.dumps(out))
"""


def import_check(python: str, modules: Sequence[str], *, locate: Sequence[str] = (), site: str | None = None,
                 timeout: float = 300) -> dict[str, dict]:
  """Imports each of `modules` in a fresh `python` (with `site` first on PYTHONPATH when given), and finds
  each of `locate` without importing it: {module: {"ok": bool, "file"/"version" or "error"}}."""
  env = dict(os.environ)
  if site:
    env["PYTHONPATH"] = os.pathsep.join([site] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  r = subprocess.run([python, "-c", _IMPORT_CHECK, *modules, "--locate", *locate], capture_output=True, text=True,
                     env=env, timeout=timeout)
  lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
  if r.returncode or not lines:
    raise WheelError(f"{python} could not run the import check (exit {r.returncode}): {r.stderr.strip()[-500:]}")
  return json.loads(lines[-1])


def _interpreter(python: str) -> tuple[str, bool]:
  """(its CPython tag, e.g. 'cp312'; whether it has pip)."""
  r = subprocess.run([python, "-c", "import sys, importlib.util as u; "
                      "print(f'cp{sys.version_info[0]}{sys.version_info[1]}', u.find_spec('pip') is not None)"],
                     capture_output=True, text=True, timeout=120)
  if r.returncode:
    raise WheelError(f"Cannot run {python}: {r.stderr.strip()[-300:]}; set PYTHON to the benchmark's interpreter.")
  tag, has_pip = r.stdout.split()
  return tag, has_pip == "True"


@dataclasses.dataclass
class Plan:
  """What `install` does: the wheels to install (their module does not import) and those it skips."""
  python: str
  tag: str
  has_pip: bool
  to_install: list[Pin]
  present: dict[str, dict]   # module -> import_check entry, for the pins that import already
  errors: dict[str, str]     # module -> why it does not import now
  total_bytes: int

  def incompatible(self) -> list[Pin]:
    """Wheels to install that are built for another CPython than the interpreter's."""
    return [p for p in self.to_install if p.python_tag.startswith("cp") and p.python_tag != self.tag]

  def describe(self, wheel_dir, site) -> list[str]:
    lines = [f"wheels from {wheel_dir}: {len(self.to_install) + len(self.present)} pinned, "
             f"{self.total_bytes / 2**20:.1f} MiB, sha256 checked"]
    if self.to_install:
      lines.append(f"to install into {site} ({'pip' if self.has_pip else 'unpacked: this python has no pip'}): "
                   + ", ".join(p.requirement for p in self.to_install))
    else:
      lines.append("to install: none")
    if self.present:
      lines.append("already importable, skipped: " + ", ".join(sorted(self.present)))
    for p in self.incompatible():
      lines.append(f"WILL FAIL: {p.file} is for {p.python_tag} and {self.python} is {self.tag}; pin wheels for "
                   f"this Python in a list of its own (python3 launch/gpu_wheels.py pin --python "
                   f"{self.tag[2]}.{self.tag[3:]} --pins FILE DIR) and pass it as WHEEL_PINS=FILE")
    return lines


def plan_install(pins: Sequence[Pin], wheel_dir, *, python: str = sys.executable) -> Plan:
  total = verify(pins, wheel_dir)
  tag, has_pip = _interpreter(python)
  found = import_check(python, [p.module for p in pins])
  return Plan(python=python, tag=tag, has_pip=has_pip, to_install=[p for p in pins if not found[p.module]["ok"]],
              present={m: v for m, v in found.items() if v["ok"]},
              errors={m: v["error"] for m, v in found.items() if not v["ok"]}, total_bytes=total)


def _unpack(wheel: pathlib.Path, site: pathlib.Path) -> None:
  """Installs a wheel by unpacking it (what pip --target does for the files that matter here)."""
  with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
      parts = info.filename.split("/")
      if parts[0].endswith(".data"):
        if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
          continue   # scripts, headers, data files: not needed to import
        parts = parts[2:]
      target = site.joinpath(*parts)
      if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        continue
      target.parent.mkdir(parents=True, exist_ok=True)
      with z.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def install(plan: Plan, wheel_dir, site) -> dict:
  """Installs plan.to_install into `site`, then checks every pinned module imports with PYTHONPATH=site and
  that the machine's own packages (MACHINE_OWN) are not shadowed by it. Returns a summary for the records."""
  wheel_dir, site = pathlib.Path(wheel_dir), pathlib.Path(site)
  bad = plan.incompatible()
  if bad:
    raise WheelError(plan.describe(wheel_dir, site)[-1])
  site.mkdir(parents=True, exist_ok=True)
  files = [str(wheel_dir / p.file) for p in plan.to_install]
  if files and plan.has_pip:
    r = subprocess.run([plan.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                        "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site), *files],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
      raise WheelError(f"pip install into {site} failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
  elif files:
    for f in files:
      _unpack(pathlib.Path(f), site)
  modules = [p.module for p in plan.to_install] + list(plan.present)
  after = import_check(plan.python, modules, locate=MACHINE_OWN, site=str(site))
  broken = {m: after[m]["error"] for m in modules if not after[m]["ok"]}
  if broken:
    raise WheelError("after installing, these still do not import: " +
                     "; ".join(f"{m}: {e}" for m, e in broken.items()) +
                     ". A dependency is missing from launch/gpu_wheels.txt: add it (pin REQUIREMENT=MODULE).")
  root = str(site.resolve()) + os.sep
  shadowed = [m for m in MACHINE_OWN if after[m]["ok"] and after[m]["file"] and
              os.path.realpath(after[m]["file"]).startswith(root)]
  if shadowed:
    raise WheelError(f"{site} shadows the machine's own {', '.join(shadowed)}; remove them from the pin list.")
  return {"site": str(site), "installed": [p.requirement for p in plan.to_install],
          "skipped_importable": sorted(plan.present), "method": "pip" if plan.has_pip else "unpack",
          "modules": {m: after[m].get("version", "") for m in modules},
          "machine": {m: (after[m]["version"] if after[m]["ok"] else None) for m in MACHINE_OWN}}


# --------------------------------------------------------------------------- command line

def _requirement_module(text: str) -> tuple[str, str]:
  req, sep, module = text.rpartition("=")
  if not sep or "==" not in req or not module:
    raise argparse.ArgumentTypeError(f"expected NAME==VERSION=MODULE, e.g. grain==0.2.18=grain; got {text!r}")
  return req, module


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="launch/gpu_wheels.py", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name in ("fetch", "verify", "install", "pin"):
    p = sub.add_parser(name)
    p.add_argument("dir", help="the wheel directory")
    p.add_argument("--pins", default=str(DEFAULT_PINS), help="the pin list (default launch/gpu_wheels.txt)")
    if name in ("fetch", "pin"):
      p.add_argument("--python", default=DEFAULT_PYTHON, help="CPython version of the GPU machine (default 3.12)")
      p.add_argument("--pip-arg", action="append", default=[], help="extra pip download argument (repeatable)")
    if name == "pin":
      p.add_argument("requirements", nargs="*", type=_requirement_module, metavar="NAME==VERSION=MODULE",
                     help="what to pin (default: the requirements already in the pin list)")
    if name == "install":
      p.add_argument("--target", help="where to install (a new or empty folder; required unless --dry-run)")
      p.add_argument("--python", default=sys.executable, dest="interpreter",
                     help="the interpreter that will run the benchmark (default: this one)")
      p.add_argument("--dry-run", action="store_true", help="print what install would do")
  args = parser.parse_args(argv)
  try:
    if args.command == "pin":
      reqs = args.requirements or [(p.requirement, p.module) for p in read_pins(args.pins)]
      pins = pin(reqs, args.dir, python=args.python, pip_args=args.pip_arg)
      write_pins(pins, args.pins, _header(pathlib.Path(args.pins)))
      print(f"pinned {len(pins)} wheels in {args.pins}: {sum(p.size for p in pins) / 2**20:.1f} MiB")
      return 0
    pins = read_pins(args.pins)
    if args.command in ("fetch", "verify"):
      total = (fetch(pins, args.dir, python=args.python, pip_args=args.pip_arg) if args.command == "fetch"
               else verify(pins, args.dir))
      for p in pins:
        print(f"{p.size / 2**20:7.2f} MiB  {p.file}")
      print(f"{len(pins)} wheels, {total:,} bytes ({total / 2**20:.1f} MiB), sha256 ok, in {args.dir}")
      return 0
    if not args.dry_run and not args.target:
      parser.error("install needs --target SITE (a new or empty folder), or --dry-run")
    if args.target and pathlib.Path(args.target).exists() and any(pathlib.Path(args.target).iterdir()):
      parser.error(f"--target {args.target} is not empty; give a new folder (install replaces nothing)")
    plan = plan_install(pins, args.dir, python=args.interpreter)
    print("\n".join(plan.describe(args.dir, args.target or "SITE")))
    if args.dry_run:
      return 0
    summary = install(plan, args.dir, args.target)
    print(json.dumps(summary))
    print(f"export PYTHONPATH={args.target}" + (os.pathsep + "$PYTHONPATH" if os.environ.get("PYTHONPATH") else ""))
    return 0
  except WheelError as e:
    print(f"launch/gpu_wheels.py: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
