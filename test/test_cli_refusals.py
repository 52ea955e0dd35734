"""Nothing silently ignored: a wrong usage gets one line on stderr naming the flag or file and exit 2, before
any work starts; the demo and replay score a bag by the same rule."""
import json
import os
import subprocess
import sys

import pytest

from ar_ros.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def error_line(err: str) -> str:
    """The last stderr line (argparse prints its usage above it)."""
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, line", [
    (["make-bag", "{tmp}/b", "--predictions", "{tmp}/p.txt"],
     "ar-refine make-bag: error: --predictions needs --dataset, --root and --sequence"),
    (["make-bag", "{tmp}/b", "--dataset", "otb", "--sequence", "Basketball"],
     "ar-refine make-bag: error: --dataset otb needs --root"),
    (["make-bag", "{tmp}/b", "--dataset", "otb", "--root", "{tmp}"],
     "ar-refine make-bag: error: --dataset otb needs --sequence"),
    (["make-bag", "{tmp}/b", "--dataset", "otb", "--root", "{tmp}", "--sequence", "X", "--frames", "9"],
     "ar-refine make-bag: error: --frames set the synthetic sequence; a --dataset sequence has its own"),
    (["live-replay", "{tmp}", "--rate", "-1"], "ar-refine live-replay: error: argument --rate: expected a number >= 0"),
    (["live-replay", "{tmp}", "--rate", "nan"], "ar-refine live-replay: error: argument --rate: expected a number >= 0"),
    (["demo", "--frames", "0"], "ar-refine demo: error: argument --frames: expected a whole number >= 1, got 0"),
    (["eval", "--threads", "-3"], "ar-refine eval: error: argument --threads: "),  # names the flag, not torch's words
    (["replay", "{tmp}", "--threads", "-3"], "ar-refine replay: error: argument --threads: "),
    (["train", "--threads", "-3"], "ar-refine train: error: argument --threads: "),
    (["eval", "--suite", "tiny", "--out", "{tmp}/p.txt"],
     "ar-refine eval: error: --out {tmp}/p.txt is a file; it must be a folder"),
    (["export", "onnx", "{tmp}/p.txt"], "ar-refine export: error: OUT_DIR {tmp}/p.txt is a file; it must be a folder"),
    (["score", "{tmp}", "{tmp}/p.txt"], "ar-refine score: error: {tmp} is a directory; score takes two text files"),
    (["replay", "{tmp}/nometa"], "ar-refine replay: error: {tmp}/nometa/metadata.yaml: no such file"),
])
def test_a_wrong_usage_gets_one_line_naming_it_and_exit_2_before_any_work(argv, line, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("1,2,3,4\n")
    (tmp_path / "nometa").mkdir()  # a sqlite3 bag that lost its metadata.yaml
    (tmp_path / "nometa" / "bag_0.db3").write_bytes(b"")
    before = sorted(os.listdir(tmp_path))
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and error_line(err).startswith(line.format(tmp=tmp_path)), err
    if "--threads" in argv:
        assert "-3" in error_line(err)
    assert "Traceback" not in err and out == ""
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_eval_out_that_cannot_be_created_is_refused_before_the_suite_runs(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code, out, err = run(["eval", "--suite", "tiny", "--out", tmp_path / "f" / "sub"], capsys)
    assert code == 2 and error_line(err).startswith(f"ar-refine eval: error: --out {tmp_path}/f/sub: cannot create")
    assert out == ""  # no per-sequence lines: the suite never started


def test_the_installed_command_exits_2_with_the_line(tmp_path):
    """The same path through a real process (what a shell script sees)."""
    proc = subprocess.run([sys.executable, "-m", "ar_ros", "live-replay", str(tmp_path), "--rate", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert error_line(proc.stderr) == "ar-refine live-replay: error: argument --rate: expected a number >= 0, got -1"


def test_live_replay_refuses_a_negative_rate_from_python_too(tmp_path):
    pytest.importorskip("rclpy")
    from ar_ros.ros.live_replay import live_replay
    with pytest.raises(ValueError, match="rate must be >= 0"):
        live_replay(tmp_path, rate=-1.0)


def test_demo_and_replay_score_the_same_bag_the_same_way(tmp_path, capsys):
    """One scoring rule: the init frame is not scored, by the demo and by `ar-refine replay` alike."""
    from ar_ros import demo
    summary = demo.run(str(tmp_path), frames=8, base="jitter", progress=False, live=False)
    capsys.readouterr()
    code, out, err = run(["replay", tmp_path / "sample_jitter.bag", "--json", "--no-progress"], capsys)
    assert code == 0, err
    replayed = json.loads(out)["scores"]
    shown = summary["results"]["jitter"]
    assert replayed == shown
    assert shown["base"]["frames"] == 7  # 8 frames, the init frame not scored
