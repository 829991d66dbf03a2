"""Downloads without a network: safe_extract on benign and malicious archives, hash checks, data/fetch.py."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pooch
import pytest
from PIL import Image

from wsbus.data import DataError, load_busi
from wsbus.data.download import DATASETS, fetch, safe_extract

ROOT = Path(__file__).resolve().parents[1]


def _zip(path, entries):
    """entries: (name, bytes) or (ZipInfo, bytes)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _tar(path, members):
    """members: list of (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _info(name, kind=tarfile.REGTYPE, data=None, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info, data


def _nothing_written(dest: Path, outside: Path):
    assert not outside.exists()
    assert not dest.exists() or not any(p for p in dest.rglob("*") if p.is_file())


def test_safe_extract_zip_and_tar(tmp_path):
    z = _zip(tmp_path / "ok.zip", [("data/a.txt", b"alpha"), ("data/sub/b.txt", b"beta")])
    written = safe_extract(z, tmp_path / "out_zip")
    assert (tmp_path / "out_zip" / "data" / "sub" / "b.txt").read_bytes() == b"beta"
    assert tmp_path / "out_zip" / "data" / "a.txt" in written
    t = _tar(tmp_path / "ok.tar.gz", [_info("data", tarfile.DIRTYPE), _info("data/a.txt", data=b"alpha"),
                                      _info("data/link", tarfile.SYMTYPE, linkname="a.txt")])
    safe_extract(t, tmp_path / "out_tar")
    assert (tmp_path / "out_tar" / "data" / "link").read_bytes() == b"alpha"  # a link that stays inside is fine


@pytest.mark.parametrize("name, pattern", [
    ("../evil.txt", r"'\.\./evil\.txt' contains '\.\.'"),
    ("data/../../evil.txt", r"contains '\.\.'"),
    ("/tmp/abs_evil.txt", r"absolute path"),
    ("C:/evil.txt", r"absolute path"),
    ("..\\evil.txt", r"contains '\.\.'"),
])
def test_safe_extract_refuses_escaping_zip_entries(tmp_path, name, pattern):
    z = _zip(tmp_path / "bad.zip", [("fine.txt", b"ok"), (name, b"evil")])
    with pytest.raises(DataError, match=rf"bad\.zip: entry .*{pattern}"):
        safe_extract(z, tmp_path / "dest")
    _nothing_written(tmp_path / "dest", tmp_path / "evil.txt")


def test_safe_extract_refuses_zip_symlinks(tmp_path):
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "link.zip", [(info, b"../../outside")])
    with pytest.raises(DataError, match=r"symbolic link to '\.\./\.\./outside' \(outside the destination\)"):
        safe_extract(z, tmp_path / "dest")


@pytest.mark.parametrize("member, pattern", [
    (_info("../evil.txt", data=b"x"), r"contains '\.\.'"),
    (_info("/abs/evil.txt", data=b"x"), r"absolute path"),
    (_info("data/link", tarfile.SYMTYPE, linkname="../../evil.txt"), r"symbolic link to '\.\./\.\./evil\.txt' outside"),
    (_info("data/link", tarfile.SYMTYPE, linkname="/etc/passwd"), r"symbolic link to '/etc/passwd' outside"),
    (_info("data/hard", tarfile.LNKTYPE, linkname="../evil.txt"), r"hard link to '\.\./evil\.txt' outside"),
    (_info("data/dev", tarfile.CHRTYPE), r"device file"),
    (_info("data/fifo", tarfile.FIFOTYPE), r"device file or FIFO"),
])
def test_safe_extract_refuses_bad_tar_members(tmp_path, member, pattern):
    t = _tar(tmp_path / "bad.tar.gz", [_info("data", tarfile.DIRTYPE), _info("data/ok.txt", data=b"ok"), member])
    with pytest.raises(DataError, match=rf"bad\.tar\.gz: entry .*{pattern}"):
        safe_extract(t, tmp_path / "dest")
    _nothing_written(tmp_path / "dest", tmp_path / "evil.txt")


def test_safe_extract_rejects_non_archives(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a zip or tar archive"):
        safe_extract(tmp_path / "x.zip", tmp_path / "d")
    with pytest.raises(DataError, match="archive not found"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "d")


def test_catalogue_entries_are_complete():
    assert set(DATASETS) == {"busi", "busbra"}
    for info in DATASETS.values():
        assert info.url.startswith("https://") and info.licence and info.citation and info.source
        assert info.sha256 is None or (len(info.sha256) == 64 and int(info.sha256, 16) >= 0)
    assert "CC BY 4.0" in DATASETS["busbra"].licence and "7730709" in DATASETS["busbra"].source


@pytest.fixture
def fake_busi(tmp_path, monkeypatch):
    """A tiny BUSI archive served by a local 'downloader'; pooch still verifies the hash for real."""
    buf = {}
    for cls, value in (("benign", 90), ("malignant", 60), ("normal", 120)):
        image = np.full((20, 30), value, np.uint8)
        mask = np.zeros((20, 30), np.uint8)
        if cls != "normal":
            mask[5:10, 5:15] = 255
        for suffix, arr in (("", image), ("_mask", mask)):
            out = io.BytesIO()
            Image.fromarray(arr).save(out, format="PNG")
            buf[f"Dataset_BUSI_with_GT/{cls}/{cls} (1){suffix}.png"] = out.getvalue()
    archive = _zip(tmp_path / "served.zip", list(buf.items()))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    calls = []
    real_retrieve = pooch.retrieve

    def local_download(url, output_file, pooch_obj):
        shutil.copyfile(archive, output_file)

    def retrieve(url, known_hash, fname, path, progressbar):
        calls.append(url)
        return real_retrieve(url, known_hash=known_hash, fname=fname, path=path, progressbar=False,
                             downloader=local_download)

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    return digest, calls


def test_fetch_verifies_and_extracts(tmp_path, fake_busi):
    digest, calls = fake_busi
    assert DATASETS["busi"].sha256 != digest  # the pinned hash is the real archive's: it must be replaced
    folder = fetch("busi", tmp_path / "data", sha256=digest, progress=False)
    assert folder == tmp_path / "data" / "Dataset_BUSI_with_GT" and calls
    samples = load_busi(folder)
    assert [s.id for s in samples] == ["benign (1)", "malignant (1)", "normal (1)"]
    assert samples[0].boxes.tolist() == [[5, 5, 15, 10]]


def test_fetch_refuses_a_wrong_hash(tmp_path, fake_busi):
    with pytest.raises(DataError, match="does not have the expected SHA-256"):
        fetch("busi", tmp_path / "data", sha256="0" * 64, progress=False)
    assert not (tmp_path / "data" / "Dataset_BUSI.zip").exists()
    # the pinned hash of the real archive does not match the fake one either
    with pytest.raises(DataError, match="expected SHA-256"):
        fetch("busi", tmp_path / "data", progress=False)


def test_fetch_needs_a_hash(tmp_path, fake_busi, monkeypatch):
    digest, calls = fake_busi
    monkeypatch.setitem(DATASETS, "busi", dataclasses.replace(DATASETS["busi"], sha256=None))
    with pytest.raises(DataError, match=r"no verified SHA-256.*--sha256 HASH"):
        fetch("busi", tmp_path / "data")
    assert calls == []  # refused before any download
    with pytest.raises(DataError, match="not a SHA-256"):
        fetch("busi", tmp_path / "data", sha256="abc")
    with pytest.raises(DataError, match="unknown data set 'snubh'"):
        fetch("snubh", tmp_path / "data")
    assert fetch("busi", tmp_path / "data", sha256=digest, progress=False).is_dir()


def _script():
    spec = importlib.util.spec_from_file_location("wsbus_fetch_script", ROOT / "data" / "fetch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_script_help_and_errors(tmp_path, capsys, fake_busi, monkeypatch):
    script = _script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("busi", "busbra", "CC BY 4.0", "CC0", "10.5281/zenodo.7730709", "Al-Dhabyani", "--sha256"):
        assert text in out, text
    monkeypatch.setitem(DATASETS, "busi", dataclasses.replace(DATASETS["busi"], sha256=None))
    assert script.main(["busi", "--dest", str(tmp_path)]) == 1
    assert "--sha256" in capsys.readouterr().err
    digest, _ = fake_busi
    assert script.main(["busi", "--dest", str(tmp_path), "--sha256", digest, "--no-progress"]) == 0
    assert "load_busi" in capsys.readouterr().out


def test_fetch_offline_is_one_line(tmp_path):
    """`wsbus fetch` without a network (a URL on this machine where nothing listens): one line naming the URL and
    what to do, no requests traceback, nothing downloaded."""
    import subprocess
    import sys

    code = ("import dataclasses, sys\n"
            "import wsbus.data.download as d\n"
            "d.DATASETS['busbra'] = dataclasses.replace(d.DATASETS['busbra'], url='http://127.0.0.1:9/BUSBRA.zip')\n"
            "from wsbus.cli import main\n"
            f"sys.exit(main(['fetch', 'busbra', '--dest', {str(tmp_path / 'data')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Downloading data from")]
    assert len(lines) == 1, proc.stderr
    head, tail = lines[0].split(" Connection refused); ")
    assert re.fullmatch(r"wsbus: error: busbra: cannot download http://127\.0\.0\.1:9/BUSBRA\.zip \(ConnectionError: "
                        r"\[Errno \d+\]", head), head
    assert tail == (f"nothing was downloaded. Check the network, or download the file by hand (from "
                    f"{DATASETS['busbra'].source}) to {tmp_path / 'data' / 'BUSBRA.zip'} and run this again: it is "
                    f"then checked and unpacked")
    assert not (tmp_path / "data" / "BUSBRA.zip").exists()


def test_fetch_script_offline(tmp_path, capsys, monkeypatch):
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'scholar.cu.edu.eg' (no network)")

    monkeypatch.setattr(pooch, "retrieve", offline)
    assert _script().main(["busi", "--dest", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: busi: cannot download https://scholar.cu.edu.eg/Dataset_BUSI.zip (ConnectionError: "
                          "Failed to resolve") and len(err.strip().splitlines()) == 1
