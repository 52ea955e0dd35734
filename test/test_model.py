"""The network: checkpoint layout, soft-argmax, correlation and the template kernel."""
from pathlib import Path

import pytest
import torch

from ar_ros.model import AUTHORS_CONFIG, AlphaRefineNet, NetConfig
from ar_ros.model.heads import peak_mass, soft_argmax
from ar_ros.model.neck import pixel_correlation, template_kernel

DATA = Path(__file__).parent / "data"


def _appendix_a():
    rows = []
    for line in (DATA / "authors_r34_state_dict.txt").read_text().splitlines():
        name, shape = line.split()[:2]
        rows.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v)))
    return rows


def test_state_dict_matches_authors_keys_and_shapes_in_order():
    expected = _appendix_a()
    assert len(expected) == 354
    got = [(k, tuple(v.shape)) for k, v in AlphaRefineNet(AUTHORS_CONFIG).state_dict().items()]
    assert got == expected


def test_float_value_count_matches_authors_model():
    sd = AlphaRefineNet().state_dict()
    assert sum(v.numel() for v in sd.values() if v.is_floating_point()) == 23_846_591
    assert sum(1 for v in sd.values() if v.dtype == torch.int64) == 50


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_depths_build_and_run(depth):
    net = AlphaRefineNet(NetConfig(depth=depth, input_size=128, with_top=False, crop_mode="clean")).eval()
    with torch.inference_mode():
        out = net(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128), with_mask=True)
    assert out["boxes"].shape == (2, 4)
    assert out["score"].shape == (2,)
    assert out["mask"].shape == (2, 1, 128, 128)
    assert float(out["mask"].min()) >= 0.0 and float(out["mask"].max()) <= 1.0


def test_soft_argmax_one_hot_gives_cell_index_times_stride():
    score = torch.full((1, 1, 16, 16), -1e4)
    score[0, 0, 5, 9] = 1e4  # row 5, column 9
    x, y, prob = soft_argmax(score, stride=16)
    assert float(x) == pytest.approx(9 * 16)
    assert float(y) == pytest.approx(5 * 16)
    assert float(peak_mass(prob)) == pytest.approx(1.0)


def test_soft_argmax_two_equal_peaks_average_and_uniform_map():
    score = torch.full((1, 1, 16, 16), -1e4)
    score[0, 0, 2, 3] = 0.0
    score[0, 0, 10, 11] = 0.0
    x, y, _ = soft_argmax(score, stride=16)
    assert float(x) == pytest.approx((3 + 11) / 2 * 16)
    assert float(y) == pytest.approx((2 + 10) / 2 * 16)
    x, y, prob = soft_argmax(torch.zeros(1, 1, 16, 16), stride=16)
    assert float(x) == pytest.approx(7.5 * 16) and float(y) == pytest.approx(7.5 * 16)
    assert float(peak_mass(prob)) == pytest.approx(9 / 256)


def test_template_kernel_is_central_window_row_major():
    feat = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    kernel = template_kernel(feat)
    assert kernel.shape == (2, 64, 3)
    for r, c in [(0, 0), (3, 5), (7, 7)]:
        assert torch.equal(kernel[:, r * 8 + c, :], feat[:, :, 4 + r, 4 + c])


def test_pixel_correlation_equals_explicit_dot_products():
    torch.manual_seed(0)
    kernel = torch.randn(2, 64, 5)
    search = torch.randn(2, 5, 16, 16)
    out = pixel_correlation(kernel, search)
    assert out.shape == (2, 64, 16, 16)
    for b, j, y, x in [(0, 0, 0, 0), (1, 63, 15, 2), (0, 17, 8, 9)]:
        assert float(out[b, j, y, x]) == pytest.approx(float((kernel[b, j] * search[b, :, y, x]).sum()), abs=1e-5)


def test_mask_branch_runs_only_when_asked():
    net = AlphaRefineNet(NetConfig(depth=18, input_size=128, with_top=False, crop_mode="clean")).eval()
    calls = []
    net.mask_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        k = net.template(torch.randn(1, 3, 128, 128))
        assert "mask" not in net.search(torch.randn(1, 3, 128, 128), k)
        assert calls == []
        net.search(torch.randn(1, 3, 128, 128), k, with_mask=True)
    assert calls == [1]


@pytest.mark.parametrize("bad", [dict(input_size=100), dict(crop_mode="weird"), dict(search_factor=1.0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        NetConfig(**bad)
