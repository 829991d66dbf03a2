"""`wsbus predict` and `wsbus convert` as a user runs them, in a subprocess: interrupted by SIGTERM / SIGINT (partial
tables marked incomplete, no reading worker left behind), rerun into the same folder (resumed, refused, or replaced
with --overwrite), other batch sizes (the same detections), and the one-line errors of bad arguments and files."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight detector saved as ``{"model", "config": {"model"}}`` (what load_detector reads)."""
    from wsbus.models import build_detector

    torch.manual_seed(0)
    model = build_detector("tiny", min_size=SIZE, max_size=96)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config}}, path)
    return path


def _scans(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` noise scans of a few sizes and aspect ratios as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (48, 80), (90, 60), (70, 70)]
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, shapes[k % len(shapes)], dtype=np.uint8)).save(folder / f"s{k:03d}.png")
    return folder


def _wsbus(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsbus", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _predict(checkpoint, images, out, *extra):
    return ["predict", "--checkpoint", checkpoint, "--images", images, "--out", out, "--no-progress",
            "--device", "cpu", *extra]


def _one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsbus: error: "), proc.stderr
    return lines[0]


def _table(out: Path, name: str):
    with open(out / name, newline="") as f:
        return list(csv.reader(f))


def _processes_mentioning(text: str):
    """(pid, command line) of the live processes whose command line holds ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append((int(entry.name), cmdline))
    return found


def _interrupt(checkpoint, tmp_path, signum):
    """Start predict with one reading worker, send ``signum`` once a few images are done; the completed process
    and its output folder."""
    images = _scans(tmp_path / "scans", 60)
    out = tmp_path / f"out-{os.getpid()}-{signum}-{time.monotonic_ns()}"  # unique: found in the workers' cmdline
    proc = subprocess.Popen([sys.executable, "-m", "wsbus", *map(str, _predict(checkpoint, images, out, "--workers",
                                                                                "1", "--batch-size", "1"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # An image's overlay is written before its row is recorded (PredictionWriter.add), so 4 overlays on disk
        # mean at least 3 recorded images, whenever the signal lands (3 on disk once met 2 recorded, under load).
        if (out / "overlays").is_dir() and len(list((out / "overlays").iterdir())) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be interrupted: " + proc.stderr.read()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr, images, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_keeps_partial_tables_leaves_no_worker_and_a_rerun_finishes(checkpoint, tmp_path):
    rc, _, stderr, images, out = _interrupt(checkpoint, tmp_path, signal.SIGTERM)
    assert rc == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert "wsbus: interrupted by SIGTERM after" in stderr and "(complete: false); rerun the same command" in stderr
    record = json.loads((out / "images.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert record["complete"] is False and summary["complete"] is False
    done = [im["name"] for im in record["images"]]
    assert 3 <= len(done) < 60 and summary["n_images"] == len(done)
    assert f"after {len(done)} of 60 images" in stderr
    # every overlay on disk is in the tables: no stale picture of an image the tables do not list
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(im["overlay"][len("overlays/"):]
                                                                       for im in record["images"])
    time.sleep(3)
    assert _processes_mentioning(str(out)) == []                      # no DataLoader worker outlived the command
    # the same command again: resumes, keeps what was done, ends complete, as an uninterrupted run would
    again = _wsbus(*_predict(checkpoint, images, out, "--workers", "1", "--batch-size", "1"))
    assert again.returncode == 0, again.stderr
    assert f"predicted {60 - len(done)} image(s) (and kept {len(done)} from the earlier run)" in again.stdout
    fresh = tmp_path / "fresh"
    assert _wsbus(*_predict(checkpoint, images, fresh, "--workers", "0", "--batch-size", "1")).returncode == 0
    assert json.loads((out / "images.json").read_text())["complete"] is True
    for name in ("detections.csv", "summary.csv", "detections.json"):
        assert (out / name).read_text() == (fresh / name).read_text(), name
    assert sorted(p.name for p in (out / "overlays").iterdir()) == \
        sorted(p.name for p in (fresh / "overlays").iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigint_exits_130_with_the_tables_written(checkpoint, tmp_path):
    rc, _, stderr, _, out = _interrupt(checkpoint, tmp_path, signal.SIGINT)
    assert rc == 130 and "wsbus: interrupted by SIGINT after" in stderr and "Traceback" not in stderr, stderr
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    time.sleep(3)
    assert _processes_mentioning(str(out)) == []


def test_rerun_resumes_refuses_other_settings_and_overwrites(checkpoint, tmp_path):
    images = _scans(tmp_path / "scans", 5)
    out = tmp_path / "out"
    assert _wsbus(*_predict(checkpoint, images, out, "--workers", "0")).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = _one_error_line(_wsbus(*_predict(checkpoint, images, out, "--workers", "0", "--score-thresh", "0.3")))
    assert f"{out}: holds the results of a `wsbus predict` with other settings: score_thresh 0.05 then, 0.3 now" \
        in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before    # refused: nothing touched
    # a changed input folder, rerun with the same settings: the removed scan's row and overlay go, the new scan
    # is predicted, the others are kept; a stray overlay nobody lists goes too
    (images / "s001.png").unlink()
    _scans(tmp_path / "more", 1, seed=9)
    (tmp_path / "more" / "s000.png").rename(images / "s999.png")
    (out / "overlays" / "ghost.png").write_bytes(b"stale")
    again = _wsbus(*_predict(checkpoint, images, out, "--workers", "0"))
    assert again.returncode == 0 and "predicted 1 image(s) (and kept 4 from the earlier run)" in again.stdout
    record = json.loads((out / "images.json").read_text())
    names = ["s000.png", "s002.png", "s003.png", "s004.png", "s999.png"]
    assert [im["name"] for im in record["images"]] == names and record["complete"] is True
    assert sorted(p.name for p in (out / "overlays").iterdir()) == names
    assert [r[0] for r in _table(out, "summary.csv")[1:]] == names
    # --overwrite: the earlier results go, the new settings are used; a file of the user's stays
    (out / "notes.txt").write_text("mine")
    over = _wsbus(*_predict(checkpoint, images, out, "--workers", "0", "--score-thresh", "0.3", "--overwrite",
                            "--no-overlays"))
    assert over.returncode == 0, over.stderr
    assert json.loads((out / "images.json").read_text())["settings"]["score_thresh"] == 0.3
    assert not (out / "overlays").exists() and (out / "notes.txt").read_text() == "mine"
    assert all(float(r[-1]) >= 0.3 for r in _table(out, "detections.csv")[1:])


def test_batch_size_does_not_change_the_results(checkpoint, tmp_path):
    """The same detections per scan (count, order, classes; boxes and scores up to float rounding: a batched
    convolution sums in another order) whether the scans go one, three or seven at a time."""
    images = _scans(tmp_path / "scans", 7)
    runs = {}
    for b, workers in ((1, "0"), (3, "1"), (7, "0")):
        out = tmp_path / f"b{b}"
        proc = _wsbus(*_predict(checkpoint, images, out, "--workers", workers, "--batch-size", b))
        assert proc.returncode == 0, proc.stderr
        runs[b] = _table(out, "detections.csv")[1:]
    assert len(runs[1]) > 7 * 5
    for b in (3, 7):
        assert [(r[0], r[5]) for r in runs[b]] == [(r[0], r[5]) for r in runs[1]]
        values = np.array([[float(v) for v in r[1:5] + [r[6]]] for r in runs[b]])
        assert np.abs(values - np.array([[float(v) for v in r[1:5] + [r[6]]] for r in runs[1]])).max() < 1e-4


def test_convert_refuses_a_used_folder_unless_overwrite(tmp_path):
    out = tmp_path / "coco"
    assert _wsbus("convert", "--data", "phantom:4", "--to", "coco", out, "--size", "32").returncode == 0
    line = _one_error_line(_wsbus("convert", "--data", "phantom:2", "--to", "coco", out, "--size", "32"))
    assert f"{out}: already holds annotations.json and images/" in line and "--overwrite" in line
    assert len(list((out / "images").iterdir())) == 4
    proc = _wsbus("convert", "--data", "phantom:2", "--to", "coco", out, "--size", "32", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "images").iterdir())) == 2                  # no image of the earlier export left
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2


# ---------------------------------------------------------------------------------------------------------
# one line naming the file and what is wrong
# ---------------------------------------------------------------------------------------------------------

def test_device_without_cuda(checkpoint, tmp_path):
    images = _scans(tmp_path / "scans", 1)
    if torch.cuda.is_available():
        device, words = f"cuda:{torch.cuda.device_count()}", "CUDA device(s), numbered from 0"
    else:
        device, words = "cuda", "CUDA is not available on this machine"
    line = _one_error_line(_wsbus("predict", "--checkpoint", checkpoint, "--images", images, "--out",
                                  tmp_path / "o", "--device", device))
    assert f"device {device!r} requested but" in line and words in line
    assert not (tmp_path / "o").exists()


def test_out_under_a_file(checkpoint, tmp_path):
    images = _scans(tmp_path / "scans", 1)
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "sub"
    line = _one_error_line(_wsbus(*_predict(checkpoint, images, out)))
    assert f"{out}: cannot create the output folder: {tmp_path / 'file.txt'} is a file, not a folder" in line


def test_a_png_and_a_truncated_checkpoint(checkpoint, tmp_path):
    images = _scans(tmp_path / "scans", 1)
    png = images / "s000.png"
    line = _one_error_line(_wsbus(*_predict(png, images, tmp_path / "o1")))
    assert f"checkpoint '{png}' is not a wsbus checkpoint: it is a PNG image" in line
    assert "weights_only" not in line
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    line = _one_error_line(_wsbus(*_predict(cut, images, tmp_path / "o2")))
    assert f"checkpoint '{cut}' cannot be read: it is truncated or corrupt" in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_dicom_without_pydicom_names_the_file(checkpoint, tmp_path):
    from test_images import write_dicom

    scan = write_dicom(tmp_path / "scans" / "us.dcm", np.full((SIZE, SIZE), 90, np.uint8), "MONOCHROME2")
    fake = tmp_path / "no_pydicom" / "pydicom"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'pydicom' (hidden by the test)\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = _wsbus(*_predict(checkpoint, scan.parent, tmp_path / "o", "--workers", "1"), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"wsbus: skipped {scan}: a DICOM file, and reading DICOM needs pydicom, which is not installed: " \
           f"pip install 'wsbus[dicom]'" in proc.stderr
    failed = json.loads((tmp_path / "o" / "images.json").read_text())["failed"]
    assert [f["name"] for f in failed] == ["us.dcm"]
