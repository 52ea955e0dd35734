"""Evaluation at scale on tiny generated datasets (LaSOT and GOT-10k layouts, a folder of bags): the
same numbers from 1 worker, 2 worker processes and Ray; resume after a kill; failures reported per
sequence; bad inputs in one line. The shipped model, 160x120 frames."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ar_ros.data.base_trackers import jittered_gt
from ar_ros.data.synthetic import Sequence
from ar_ros.eval import bags
from ar_ros.eval.sample_dataset import frame_path, write_dataset
from ar_ros.eval.scale import evaluate
from ar_ros.eval.tasks import DatasetTask, plan_dataset

LENGTHS = (7, 12, 5, 9)
MODEL = {"keep_iou": 0.85}  # the shipped model, everything else as the CLI's defaults
SETTINGS = {"dataset": "test"}


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "ar_ros", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


def _scores(data):
    """The report without what depends on time."""
    return data["summary"], {n: {k: v for k, v in s.items() if k != "refine_ms"} for n, s in data["sequences"].items()}


@pytest.fixture(scope="module")
def lasot(tmp_path_factory):
    root = tmp_path_factory.mktemp("lasot")
    write_dataset(root / "data", "lasot", LENGTHS, results=root / "results")
    return root


@pytest.fixture(scope="module")
def reference(lasot):
    """One worker in this process: the numbers every other way of running must give."""
    tasks, failed = plan_dataset(f"lasot:{lasot / 'data'}", str(lasot / "results"))
    outcome = evaluate(tasks, MODEL, SETTINGS, failed, out=lasot / "ref", progress=False)  # all cores
    assert outcome.exit_code == 0 and not outcome.failed
    return outcome


def test_one_worker_report_and_files(lasot, reference):
    data = reference.data
    assert set(data["sequences"]) == {f"synth-{i + 1}" for i in range(len(LENGTHS))}
    assert {"auc", "precision", "norm_precision", "ao"} <= set(data["summary"]["refined"])
    assert data["summary"]["refined"]["auc"] > data["summary"]["base"]["auc"]  # jittered boxes get better
    assert data["failed"] == {} and data["timing"]["refinements"] == sum(LENGTHS)
    out = lasot / "ref"
    for name in ("eval.json", "sequences.csv", "success.png", "auc_per_sequence.png"):
        assert (out / name).is_file(), name
    for i, n in enumerate(LENGTHS):  # the trackers' text format, one row per frame, row 0 the init box
        rows = np.loadtxt(out / "results" / f"synth-{i + 1}.txt", delimiter=",")
        gt = np.loadtxt(lasot / "data" / "synth" / f"synth-{i + 1}" / "groundtruth.txt", delimiter=",")
        assert rows.shape == (n, 4) and np.allclose(rows[0], gt[0])
    assert len((out / "sequences.csv").read_text().splitlines()) == 1 + len(LENGTHS)


def test_ray_local_gives_the_same_numbers(lasot, reference, tmp_path):
    pytest.importorskip("ray")  # in requirements.txt: installed wherever the tests run
    tasks, failed = plan_dataset(f"lasot:{lasot / 'data'}", str(lasot / "results"))
    outcome = evaluate(tasks, MODEL, SETTINGS, failed, workers=2, threads=1, use_ray=True, progress=False)
    assert outcome.exit_code == 0 and _scores(outcome.data) == _scores(reference.data)


class DiesOnce(DatasetTask):
    """A real worker death (SIGKILL of its own process) the first time it runs; fine the second."""

    marker = ""

    def run(self, refiner, progress=None):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(refiner, progress)


def test_two_workers_equal_one_digit_for_digit_and_a_dead_worker_costs_only_its_sequence(lasot, reference, tmp_path):
    tasks, failed = plan_dataset(f"lasot:{lasot / 'data'}", str(lasot / "results"))
    dying = DiesOnce(**{f: getattr(tasks[0], f) for f in tasks[0].__dataclass_fields__})
    dying.marker = str(tmp_path / "died")  # travels with the pickled task
    outcome = evaluate([dying, *tasks[1:]], MODEL, SETTINGS, failed, out=tmp_path / "out", workers=2,
                       progress=False)  # the cores split between the two
    assert os.path.exists(dying.marker) and outcome.exit_code == 0  # it died once, then ran on a new worker
    assert _scores(outcome.data) == _scores(reference.data)
    for name in reference.data["sequences"]:
        assert (tmp_path / "out" / "results" / f"{name}.txt").read_text() == \
            (lasot / "ref" / "results" / f"{name}.txt").read_text()


def test_a_killed_run_resumes_and_ends_with_the_same_report(lasot, reference, tmp_path):
    args = ["eval", "--dataset", f"lasot:{lasot / 'data'}", "--base-results", str(lasot / "results"),
            "--out", str(tmp_path / "out"), "--json", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ar_ros", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    records = tmp_path / "out" / "sequences"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(records.glob("*.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    kept = len(list(records.glob("*.json")))
    assert kept >= 1
    if proc.returncode != 0:  # stopped before the end (the usual case): it says how to go on
        assert proc.returncode == 130 and "Resume with: ar-refine eval --dataset" in err, err
        assert kept < len(LENGTHS) and not list(records.glob(".*tmp*"))  # no half-written record
    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["timing"]["skipped"] == kept
    assert _scores(data) == _scores(reference.data)
    # what an open loop feeds back is nothing: reseed_below is no part of the key a rerun must match
    assert "reseed_below" not in json.loads((tmp_path / "out" / "run.json").read_text())["model"]


@pytest.fixture
def got10k(tmp_path):
    root = tmp_path / "got"
    write_dataset(root, "got10k", (6, 5, 6))
    os.remove(frame_path(root, "got10k", 1, 3))  # sequence 2: a missing frame
    frame_path(root, "got10k", 2, 4).write_bytes(b"not a jpeg")  # sequence 3: a corrupt one
    return root


def test_broken_sequences_are_reported_while_the_others_finish(got10k, tmp_path):
    proc = _cli("eval", "--dataset", f"got10k:{got10k}", "--base", "jitter", "--threads", "1", "--json",
                "--no-progress", "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data["sequences"]) == ["GOT-10k_Test_000001"] and data["summary"]["refined"]["frames"] == 5
    assert set(data["failed"]) == {"GOT-10k_Test_000002", "GOT-10k_Test_000003"}
    assert "5 GT rows but only 4 frames" in data["failed"]["GOT-10k_Test_000002"]
    assert "cannot read image" in data["failed"]["GOT-10k_Test_000003"]
    assert "failed: GOT-10k_Test_000003: DatasetError: cannot read image" in proc.stderr
    assert "2 of 3 sequences failed" in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot read image" in (tmp_path / "out" / "sequences.csv").read_text()


def test_bad_inputs_get_one_clear_line(lasot, tmp_path):
    proc = _cli("eval", "--dataset", f"lasot:{tmp_path / 'missing'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"ar-refine eval: error: dataset folder not found: {tmp_path / 'missing'}"]
    proc = _cli("eval", "--dataset", f"vot:{lasot}")
    assert proc.returncode == 2 and "unknown dataset 'vot'" in proc.stderr and len(proc.stderr.splitlines()) == 1
    results = tmp_path / "results"
    results.mkdir()
    for i, n in enumerate(LENGTHS):
        rows = np.loadtxt(lasot / "results" / f"synth-{i + 1}.txt", delimiter=",")
        np.savetxt(results / f"synth-{i + 1}.txt", rows[:-1] if i == 1 else rows, delimiter=",")
    tasks, failed = plan_dataset(f"lasot:{lasot / 'data'}", str(results))
    assert len(tasks) == len(LENGTHS) - 1 and failed == {
        "synth-2": f"{results / 'synth-2.txt'}: {LENGTHS[1] - 1} rows for {LENGTHS[1]} frames"}


def _bag(path, seed, n=6):
    frames = list(Sequence(seed, n, (160, 120)))
    gt = [f.box for f in frames]
    return bags.write_sequence(path, (f.image for f in frames), jittered_gt(gt, seed), gt, fps=10)


def test_a_folder_of_bags_one_report_two_workers_equal_one(tmp_path):
    for i in range(3):
        _bag(tmp_path / "bags" / f"run{i}", 700 + i, n=5 + i)
    one = _cli("replay", str(tmp_path / "bags"), "--threads", "1", "--json", "--no-progress",
               "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _cli("replay", str(tmp_path / "bags" / "run*"), "--threads", "1", "--workers", "2", "--json",
               "--no-progress")
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert sorted(a["sequences"]) == ["run0", "run1", "run2"] and a["summary"]["refined"]["frames"] > 0
    assert _scores(a) == _scores(b)
    assert (tmp_path / "one" / "results" / "run2.txt").read_text().count("\n") == 7


def test_the_table_names_the_sequences_that_got_worse():
    from ar_ros.eval.report import worse_sequences
    seq = lambda base, refined: {"base": {"auc": base}, "refined": {"auc": refined}}  # noqa: E731
    line = worse_sequences({"a": seq(0.5, 0.7), "b": seq(0.6, 0.55), "c": seq(0.8, 0.5), "d": {"base": None}})
    assert line == "got worse (AUC): 2 of 4 sequences: c 80.0 -> 50.0, b 60.0 -> 55.0"
    assert worse_sequences({"a": seq(0.5, 0.7)}) == "got worse (AUC): none of 1 sequences"
