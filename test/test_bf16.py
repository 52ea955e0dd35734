"""bf16 on CPUs with bf16 units: refused elsewhere, boxes like fp32 where supported, ``auto`` gated per weights."""
import numpy as np
import pytest
import torch

from ar_ros import Refiner
from ar_ros.engine import precision
from ar_ros.eval.precision_check import check_bf16
from ar_ros.eval.synthetic import Sequence

HAS_BF16 = bool(precision.cpu_bf16_units())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Verdicts go to a temporary cache folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def no_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "")


def test_bf16_is_refused_cleanly_on_a_cpu_without_bf16_units(monkeypatch, small_net):
    no_bf16_units(monkeypatch)
    with pytest.raises(ValueError, match=r"needs a CPU with bf16 units .* use 'fp32'"):
        Refiner(small_net, precision="bf16")
    with pytest.raises(ValueError, match="bf16 units"):
        check_bf16(small_net, [Sequence(7, 3, (160, 120))])
    r = Refiner(small_net, precision="auto")
    assert r.dtype == torch.float32 and r.precision_note == "fp32: this CPU has no bf16 units"


def test_unknown_precision_names_the_choices(small_net):
    with pytest.raises(ValueError, match="bf16"):
        Refiner(small_net, precision="int4")


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_bf16_boxes_agree_with_fp32_on_trained_weights():
    # the shipped model: the only trained weights in the repository (random weights say nothing about bf16)
    fp32, bf16 = Refiner(None, precision="fp32"), Refiner(None, precision="bf16")
    assert bf16.dtype == torch.bfloat16
    frames = list(Sequence(100_003, 8, (320, 240)))
    for r in (fp32, bf16):
        r.set_target(frames[0].image, frames[0].box)
    assert bf16._kernels["0"].dtype == torch.bfloat16  # the backbone really ran in bf16
    from ar_ros.engine.boxes import iou_rows
    from ar_ros.eval.benchmark import AGREEMENT_MIN_IOU
    diffs, a_boxes, b_boxes = [], [], []
    for f in frames[1:]:
        a, b = fp32.refine(f.image, {"0": f.box})["0"], bf16.refine(f.image, {"0": f.box}, mask=True)["0"]
        assert not b.fallback and b.mask is not None and b.mask.dtype == np.float32
        diffs.append(np.abs(np.subtract(a.box, b.box)).max())
        a_boxes.append(a.box)
        b_boxes.append(b.box)
    # the auto gate's criterion, frame by frame; the MobileNetV2 default (depthwise convolutions) moves
    # boxes more under bf16 than the ResNet-18 one did (max 0.8 px here, was 0.08 px)
    assert float(iou_rows(np.array(a_boxes), np.array(b_boxes)).mean()) >= AGREEMENT_MIN_IOU, diffs
    assert max(diffs) < 1.0, diffs


def test_auto_takes_bf16_only_with_an_accepting_verdict_for_these_weights(monkeypatch, small_net):
    # pretend bf16 units, so this runs on any CPU (without them bf16 is emulated: slow, still correct)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AVX-512 BF16")
    seqs = [Sequence(7, 3, (160, 120))]
    r = Refiner(small_net, precision="auto")
    assert r.dtype == torch.float32 and "no bf16 verdict is recorded" in r.precision_note
    # the real gate, run with a time limit nothing meets: rejected, recorded, auto stays fp32
    verdict = check_bf16(small_net, seqs, max_time_ratio=0.0, repeat=2)
    assert verdict["bf16"] is False and 0.0 <= verdict["mean_iou"] <= 1.0 and verdict["time_ratio"] > 0
    r = Refiner(small_net, precision="auto")
    assert r.dtype == torch.float32 and r.precision_note.startswith("fp32: recorded bf16 verdict")
    # an accepting verdict for other weights does not apply to these
    other = type(small_net)(small_net.config).eval()
    check_bf16(other, seqs, min_iou=0.0, max_time_ratio=float("inf"), repeat=2)
    assert Refiner(small_net, precision="auto").dtype == torch.float32
    assert Refiner(other, precision="auto").dtype == torch.bfloat16
    # explicit precisions ignore verdicts
    assert Refiner(other, precision="fp32").dtype == torch.float32


def test_a_corrupt_verdict_file_means_no_verdict(monkeypatch, small_net):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX")
    path = precision.verdicts_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    r = Refiner(small_net, precision="auto")
    assert r.dtype == torch.float32 and "no bf16 verdict" in r.precision_note


def run_cli(argv, capsys):
    from ar_ros.cli import main
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_check_bf16_command_refuses_in_one_line_without_bf16_units(monkeypatch, capsys):
    no_bf16_units(monkeypatch)
    code, out, err = run_cli(["check-bf16", "--suite", "tiny"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs a CPU with bf16 units" in err, err
    assert not precision.verdicts_path().exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_check_bf16_command_records_what_auto_then_uses(capsys):
    code, out, err = run_cli(["check-bf16", "--suite", "tiny"], capsys)
    assert code in (0, 1), err  # accepted or rejected: both are measured verdicts
    assert ("bf16 accepted" in out) == (code == 0) and str(precision.verdicts_path()) in out
    r = Refiner(None, precision="auto")
    assert r.dtype == (torch.bfloat16 if code == 0 else torch.float32), r.precision_note
