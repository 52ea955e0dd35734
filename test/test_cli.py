"""ar-refine as a robot user meets it: the node's model options on every command that refines, an ONNX
export folder used from the CLI, make-bag's help and messages in CLI terms."""
import json

import pytest

from ar_ros.cli import build_parser, main
from ar_ros.ros.params import BY_NAME

REFINING = {"demo": [], "replay": ["bag"], "eval": [], "live-replay": ["bag"]}


def run(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.mark.parametrize("command", sorted(REFINING))
def test_every_refining_command_takes_the_nodes_model_options(command):
    parser = build_parser()
    for name in ("backend", "precision"):
        for value in BY_NAME[name].choices:  # the node's parameter table is the one list of choices
            args = parser.parse_args([command, *REFINING[command], f"--{name}", value])
            assert getattr(args, name) == value
    args = parser.parse_args([command, *REFINING[command], "--device", "cuda:1", "--threads", "3",
                              "--checkpoint", "model_onnx"])
    assert (args.device, args.threads, args.checkpoint) == ("cuda:1", 3, "model_onnx")
    with pytest.raises(SystemExit):
        parser.parse_args([command, *REFINING[command], "--backend", "tflite"])


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    from ar_ros.eval import bags
    from ar_ros.data.base_trackers import jittered_gt
    from ar_ros.data.synthetic import Sequence
    frames = list(Sequence(100_000, 6, (320, 240)))
    gt = [f.box for f in frames]
    return bags.write_sequence(tmp_path_factory.mktemp("bag") / "in", (f.image for f in frames),
                               jittered_gt(gt, 2), gt, fps=10)


def test_replay_runs_an_onnx_export_folder_with_its_backend(small_bag, onnx_dir, capsys):
    code, out, err = run(["replay", small_bag, "--checkpoint", onnx_dir, "--backend", "onnxruntime",
                          "--json", "--no-progress"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["frames"] == 6 and info["refined_frames"] >= 5 and "refined" in info["scores"]
    # the folder with the default torch backend: what to pass instead, not "checkpoint not found"
    code, out, err = run(["replay", small_bag, "--checkpoint", onnx_dir, "--no-progress"], capsys)
    assert code == 2 and "--backend onnxruntime" in err, err


def test_replay_closed_loop_takes_reseed_below(small_bag, capsys):
    """replay --base --loop closed feeds back per --reseed-below (the shipped head; 1: every trusted box)."""
    counts = {}
    for below in ("0", "1"):
        code, out, err = run(["replay", small_bag, "--base", "kcf", "--loop", "closed", "--reseed-below", below,
                              "--json", "--no-progress"], capsys)
        assert code == 0, err
        info = json.loads(out)
        assert info["reseed_below"] == float(below) and info["failed_reseeds"] == 0
        counts[below] = info["reseeds"]
    assert counts["0"] == 0 and counts["1"] > 0, counts


def test_eval_runs_an_onnx_export_folder_with_its_backend(onnx_dir, capsys):
    code, out, err = run(["eval", "--suite", "tiny", "--checkpoint", onnx_dir, "--backend", "onnxruntime",
                          "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["summary"]) >= {"base", "refined"}


@pytest.mark.parametrize("extra, keep, margin, reseed_below", [
    (["--loop", "open"], 0.85, -0.01, None), (["--loop", "closed"], 0.0, 0.05, 0.5),
    (["--loop", "closed", "--keep-iou", "0.9", "--quality-margin", "0.2", "--reseed-below", "1"], 0.9, 0.2, 1.0)])
def test_keep_gates_default_to_the_nodes_in_open_loop_and_to_the_closed_loop_ones(extra, keep, margin, reseed_below,
                                                                                  capsys):
    """keep_iou (models without a head) off in closed loop; the shipped model's head keeps a base box there
    only when it is predicted better by 0.05 (options.CLOSED_LOOP_GATES), and feeds a refined box back only
    where the base box is predicted off (reseed_below; 1: every trusted box, the paper's loop)."""
    code, out, err = run(["eval", "--suite", "tiny", "--base", "kcf", "--box-mode", "fused", *extra, "--json"],
                         capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["keep_iou"] == pytest.approx(keep) and info["box_mode"] == "fused"
    assert info["quality_margin"] == pytest.approx(margin)  # the shipped model has a quality head
    assert info.get("reseed_below") == (pytest.approx(reseed_below) if reseed_below is not None else None)
    assert BY_NAME["keep_iou"].default == pytest.approx(0.85)
    for seq in info["sequences"].values():  # how often the loop fed back, and how often OpenCV refused
        assert seq["failed_reseeds"] == 0
        assert seq["reseeds"] == 0 if reseed_below is None else (seq["reseeds"] > 0 or reseed_below < 1.0)


def test_make_bag_explains_every_option_and_says_force_not_overwrite(tmp_path, capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["make-bag"]
    undocumented = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert not undocumented
    argv = ["make-bag", tmp_path / "b", "--frames", "3", "--width", "160", "--height", "120", "--no-progress"]
    assert run(argv, capsys)[0] == 0
    code, out, err = run(argv, capsys)
    assert code == 2 and "exists; add --force to replace it" in err and "overwrite" not in err, err
    assert run(argv + ["--force"], capsys)[0] == 0


@pytest.mark.parametrize("flag", ["--init-backbone", "--freeze-box"])
def test_train_flags_that_fine_tune_a_refiner_need_init_from(flag, tmp_path, capsys):
    code, out, err = run(["train", "--out", str(tmp_path / "t"), flag, "--no-progress"], capsys)
    name = flag[2:].replace("-", "_")
    assert code == 2 and err.strip() == f"ar-refine train: error: {name} ({flag}) needs init_from (--init-from)", err
    assert not (tmp_path / "t").exists()
    code, _, err = run(["train", "--out", str(tmp_path / "t"), "--freeze-box", "--init-from", "x.pt"], capsys)
    assert code == 2 and "freeze_box (--freeze-box) keeps backbone" in err
    assert "needs init_backbone (--init-backbone)" in err


def test_info_prints_a_short_summary_first_and_the_details_on_request(capsys):
    code, out, err = run(["info"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) <= 8 and [line.split(":")[0] for line in lines[:5]] == [
        "model", "backbone", "crops", "heads", "from"]
    assert "MobileNetV2" in lines[1] and "M parameters" in lines[1] and "config:" not in out
    code, verbose, _ = run(["info", "--verbose"], capsys)
    assert code == 0 and verbose.startswith(out.split("(details")[0]) and "config:" in verbose
    assert "'depth': 0" not in verbose  # MobileNetV2 has no depth; 0 was only a placeholder
    code, as_json, _ = run(["info", "--json"], capsys)
    assert code == 0 and json.loads(as_json)["config"]["backbone"] == "mobilenet_v2"


def test_every_argument_of_replay_and_live_replay_has_help_and_eval_shows_its_suite_default():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("replay", "live-replay"):
        silent = [a.dest for a in sub[command]._actions if not a.help]
        assert not silent, (command, silent)
    suite = next(a for a in sub["eval"]._actions if a.dest == "suite")
    assert "(default: small)" in suite.help


def test_top_level_help_does_not_call_eval_and_train_synthetic_only(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    lines = {name: line for line in out.splitlines() for name in ("eval", "train")
             if line.strip().startswith(name + " ")}
    assert set(lines) == {"eval", "train"} and "real video" in out and "tracking datasets" in out
    assert all("on a synthetic suite" not in line and "on synthetic data" not in line for line in lines.values())
    assert "node" in out and "base-tracker" in out


def test_every_option_of_every_command_says_what_it_is():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    silent = {name: [a.dest for a in p._actions if not a.help] for name, p in sub.items()}
    assert not {k: v for k, v in silent.items() if v}


def test_info_on_an_export_folder_summarises_its_model_then_lists_graphs(onnx_dir, capsys):
    code, out, err = run(["info", onnx_dir], capsys)
    assert code == 0, err
    keys = [line.split(":")[0] for line in out.strip().splitlines()]
    assert keys[:6] == ["export", "backbone", "crops", "heads", "from", "graph"] and "config" not in keys
    code, out, _ = run(["info", onnx_dir, "--verbose"], capsys)
    assert code == 0 and "config:" in out


def test_eval_calibration_needs_a_quality_head_and_draws_its_plot(tmp_path, capsys):
    """--calibration on a model without a head is one line and exit 2; with a head it writes the PNG and the
    figures (a new head on the shipped weights, untrained: the plot and the numbers exist, whatever they say)."""
    import dataclasses
    import json
    import torch
    from ar_ros.backends.factory import DEFAULT_CHECKPOINT
    from ar_ros.model import AlphaRefineNet, load_network, save_checkpoint
    shipped = load_network(DEFAULT_CHECKPOINT)[0]
    weights = {k: v for k, v in shipped.state_dict().items() if not k.startswith("quality_head.")}
    plain = AlphaRefineNet(dataclasses.replace(shipped.config, quality_head=False)).eval()
    plain.load_state_dict(weights)
    code, out, err = run(["eval", "--suite", "tiny", "--calibration", str(tmp_path / "c.png"), "--device", "cpu",
                          "--checkpoint", str(save_checkpoint(tmp_path / "plain.pt", plain))], capsys)
    assert code == 2 and "quality head" in err and err.count("\n") == 1
    torch.manual_seed(0)
    net = AlphaRefineNet(dataclasses.replace(shipped.config, quality_head=True)).eval()
    net.load_state_dict(weights, strict=False)
    path = save_checkpoint(tmp_path / "q.pt", net)
    code, out, err = run(["eval", "--suite", "tiny", "--checkpoint", str(path), "--device", "cpu", "--json",
                          "--calibration", str(tmp_path / "c.png"), "--quality-margin", "1"], capsys)
    assert code == 0, err
    data = json.loads(out)
    figures = data["calibration"]
    assert figures["n"] > 0 and 0.0 <= figures["ece_quality"] <= 1.0 and (tmp_path / "c.png").stat().st_size > 0
    # a synthetic suite: how many refined boxes sat on a twin of the target (figures without them if any)
    assert 0 <= data["calibration_twin_frames"] <= figures["n"]
    assert ("calibration_without_twins" in data) == (data["calibration_twin_frames"] > 0)
    assert sum(s["twin_frames"] for s in data["sequences"].values()) == data["calibration_twin_frames"]
    # the margin reached the refiner: base better by a whole IoU never happens, so no box was kept
    assert data["quality_margin"] == 1.0 and data["kept"] == 0
    code, _, err = run(["eval", "--suite", "tiny", "--quality-margin", "2"], capsys)
    assert code == 2 and "quality_margin" in err
