"""The ``wsbus`` command line, run in subprocesses with tiny step counts (errors also in-process)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsbus.checkpoint import load_checkpoint
from wsbus.cli import main
from wsbus.data.sources import DEFAULT_PHANTOM_IMAGES, load_source, parse_source
from wsbus.experiments import PHANTOM_QUICK
from wsbus.experiments.data import load_samples

ROOT = Path(__file__).resolve().parent.parent


def wsbus(*args, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "wsbus", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


TRAIN = ("train", "--data", "phantom", "--quick", "--mode", "joint", "--checkpoint-every", "2", "--no-progress",
         "--no-tensorboard", "--device", "cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = wsbus(*TRAIN, "--steps", "6", "--keep-every", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_version():
    from wsbus import __version__

    proc = wsbus("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"wsbus {__version__}"


def test_train_writes_its_files(trained):
    out, proc = trained
    assert "to step 6" in proc.stdout and "world size 1" in proc.stdout
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 6 and ck["config"]["model"]["backbone"] == "tiny"
    assert load_checkpoint(out / "step_000004.pt")["step"] == 4
    with open(out / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(6))
    split = json.loads((out / "split.json").read_text())
    ids = {s.id for s in load_samples("phantom", PHANTOM_QUICK, 0)}
    roles = [set(split[k]) for k in ("strong", "weak", "test")]
    assert all(roles) and not (roles[0] & roles[1]) and not (roles[0] & roles[2]) and not (roles[1] & roles[2])
    assert set().union(*roles) <= ids
    assert split["test"] == ck["config"]["metadata"]["split_ids"]["test"]
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"]["mode"] == "joint" and config["trainer"]["steps"] == 6 and config["method"] == "joint"
    assert config["split"]["n_strong"] == len(split["strong"]) and config["recipe"]["n_strong"] is None
    assert config["provenance"]["wsbus"] and config["argv"][-1] == str(out)
    assert ck["provenance"]["torch"] and "mil" in ck
    assert config["model"]["backbone"] == "tiny"
    assert ck["config"]["trainer"]["n_strong_images"] == len(split["strong"])
    assert ck["config"]["trainer"]["n_weak_images"] == len(split["weak"])


def test_resume_via_cli_matches_an_uninterrupted_run(trained, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # the uninterrupted run's step-4 checkpoint, continued to step 6 by a new process
    (resumed / "last.pt").write_bytes((out / "step_000004.pt").read_bytes())
    (resumed / "split.json").write_bytes((out / "split.json").read_bytes())
    proc = wsbus(*TRAIN, "--steps", "6", "--out", resumed, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # another split is refused on resume
    proc = wsbus(*TRAIN, "--steps", "8", "--out", resumed, "--resume", "--seed", "1")
    assert proc.returncode == 2 and "differ from" in proc.stderr and "split.json" in proc.stderr


def test_evaluate_prints_corloc_with_cis(trained, tmp_path):
    out, _ = trained
    proc = wsbus("evaluate", "--checkpoint", out / "last.pt", "--device", "cpu", "--n-boot", "200",
                 "--json", tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "test images of phantom" in lines[0]
    assert [ln.split()[0] for ln in lines[2:5]] == ["benign", "malignant", "overall"]
    result = json.loads((tmp_path / "eval.json").read_text())
    test_ids = json.loads((out / "split.json").read_text())["test"]
    samples = {s.id: s for s in load_samples("phantom", PHANTOM_QUICK, 0)}
    n_mass = sum(1 for i in test_ids if samples[i].image_label != 0)
    assert result["corloc"]["overall"]["n"] == n_mass
    for row in result["corloc"].values():
        if row["corloc"] is not None:
            lo, hi = row["ci"]
            assert 0 <= lo <= row["corloc"] <= hi <= 1


def test_every_help_answers_without_importing_torch():
    commands = ["train", "evaluate", "self-train", "experiment", "demo", "ablate", "fetch"]
    code = ("import sys\nfrom wsbus.cli import main\n"
            f"for c in {commands!r}:\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO TORCH")
    for option in ("--quick", "--dest", "--seeds", "--evaluate-on", "--mixing", "--recipe"):
        assert option in proc.stdout


@pytest.mark.slow
def test_experiment_quick_over_two_seeds(tmp_path):
    out = tmp_path / "x"
    proc = wsbus("experiment", "--quick", "--seeds", "0", "1", "--methods", "strong_few", "joint", "--out", out,
                 "--no-progress", "--device", "cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["corloc"]) == {"strong_few", "joint"}
    for s in (0, 1):
        r = json.loads((out / f"seed_{s}" / "results.json").read_text())
        assert [m["name"] for m in r["methods"]] == ["strong_few", "joint"] and r["config"]["seed"] == s
    assert "joint - strong_few" in (out / "summary.md").read_text()


# --------------------------------------------------------------------------------------------------------
# errors and data specs (in-process: fast)
# --------------------------------------------------------------------------------------------------------

def test_bad_data_specs_are_explained(capsys, tmp_path):
    assert main(["train", "--data", "mnist", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown data source 'mnist'" in capsys.readouterr().err
    assert main(["train", "--data", f"busi:{tmp_path / 'missing'}", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "phantom", "--steps", "0", "--out", str(tmp_path)])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "phantom", "--n-strong", "3", "--strong-fraction", "0.5", "--out", "x"])
    assert "not allowed with" in capsys.readouterr().err


def test_parse_source():
    assert parse_source("phantom") == ("phantom", DEFAULT_PHANTOM_IMAGES, None, ())
    assert parse_source("busbra:/d?device=Logiq 7&birads!=5").filters == (("device", "=", "Logiq 7"),
                                                                          ("birads", "!=", "5"))
    assert parse_source("phantom:12").n == 12
    assert parse_source("voc:/data/SNUBH").path == Path("/data/SNUBH")
    assert parse_source("BUSBRA:rel/dir").kind == "busbra"
    for bad in ("", "phantom:0", "phantom:-3", "phantom:ten", "busi:", "coco:", "cocoa:/x", "phantom?device=x",
                "busbra:/d?scanner=x", "busbra:/d?device"):
        with pytest.raises(ValueError):
            parse_source(bad)
    a, b = load_source("phantom:5", size=64), load_source("phantom:5", size=64)
    assert len(a) == 5 and a[0].image.shape == (64, 64) and [s.id for s in a] == [s.id for s in b]
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        load_source(f"voc:{__file__}")


def test_train_init_starts_from_another_runs_weights(trained, tmp_path):
    out, _ = trained
    run = tmp_path / "warm"
    proc = wsbus(*TRAIN, "--steps", "1", "--init", out / "last.pt", "--lr", "1e-12", "--out", run)
    assert proc.returncode == 0, proc.stderr
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)   # one negligible step from it
    assert load_checkpoint(run / "last.pt")["config"]["metadata"]["init"] == str(out / "last.pt")
    bad = wsbus(*TRAIN, "--steps", "1", "--init", out / "last.pt", "--size", "96", "--backbone", "resnet18",
                "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--init" in bad.stderr and "do not fit" in bad.stderr
