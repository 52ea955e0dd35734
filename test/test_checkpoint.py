"""Checkpoint formats: ours, plain state_dicts, the authors' ltr pickles, and bad files."""
import pickle
import sys
import types

import pytest
import torch

from ar_ros.model import AlphaRefineNet, CheckpointError, NetConfig, load_checkpoint, load_network, save_checkpoint

SMALL = NetConfig(depth=18, input_size=128, with_top=False, crop_mode="clean")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_own_format_round_trip_loads_with_weights_only(tmp_path):
    net = AlphaRefineNet(SMALL)
    path = save_checkpoint(tmp_path / "m.pt", net, meta={"note": "t"})
    raw = torch.load(path, weights_only=True)  # must not need unpickling of arbitrary objects
    assert raw["format"] == "ar_ros" and raw["config"]["depth"] == 18
    loaded, meta = load_network(path)
    assert loaded.config == SMALL and meta == {"note": "t"}
    assert _same_weights(net, loaded)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_half_storage_is_smaller_and_close(tmp_path):
    net = AlphaRefineNet(SMALL)
    full = save_checkpoint(tmp_path / "f.pt", net)
    half = save_checkpoint(tmp_path / "h.pt", net, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_network(half)
    w = loaded.state_dict()["corner_head.conv5_tl.weight"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, net.state_dict()["corner_head.conv5_tl.weight"], atol=1e-3)


def test_plain_state_dict_with_ddp_prefix(tmp_path):
    net = AlphaRefineNet(SMALL)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "sd.pth")
    state, config, meta = load_checkpoint(tmp_path / "sd.pth")
    assert config == SMALL and meta["source"] == "state_dict"
    assert not any(k.startswith("module.") for k in state)


def _fake_ltr_modules():
    """Classes with the authors' module paths, as their training code pickles them."""
    made = {}
    for mod_name, cls_name in [("ltr.admin.model_constructor", "NetConstructor"),
                               ("ltr.admin.settings", "Settings"), ("ltr.admin.stats", "AverageMeter")]:
        parts = mod_name.split(".")
        for i in range(1, len(parts) + 1):
            made.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        cls = type(cls_name, (), {"__module__": mod_name})
        setattr(made[mod_name], cls_name, cls)
    return made


def test_authors_ltr_checkpoint_loads_without_their_code(tmp_path):
    net = AlphaRefineNet()  # the authors' AR34 layout
    mods = _fake_ltr_modules()
    sys.modules.update(mods)
    try:
        ctor = mods["ltr.admin.model_constructor"].NetConstructor()
        ctor.fun_name, ctor.fun_module = "SEcm_resnet34", "ltr.models.SEx_beta.SEcm_r34"
        settings = mods["ltr.admin.settings"].Settings()
        settings.env = {"workspace_dir": "/x"}
        stats = {"train": {"Loss/total": mods["ltr.admin.stats"].AverageMeter()}}
        torch.save({"epoch": 40, "actor_type": "SEcm_Actor", "net_type": "SEcmnet", "net": net.state_dict(),
                    "net_info": None, "constructor": ctor, "optimizer": {"state": {}}, "stats": stats,
                    "settings": settings}, tmp_path / "SEcmnet_ep0040-c.pth.tar")
    finally:
        for name in mods:
            sys.modules.pop(name, None)
    assert "ltr" not in sys.modules
    loaded, meta = load_network(tmp_path / "SEcmnet_ep0040-c.pth.tar")
    assert meta["epoch"] == 40 and meta["source"] == "authors"
    assert loaded.config.crop_mode == "exact" and loaded.config.depth == 34
    assert _same_weights(net, loaded)
    assert "ltr" not in sys.modules  # their code was never imported


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"net": AlphaRefineNet(SMALL).state_dict(), "hook": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle '(__builtin__|builtins)\.print'"):
        load_checkpoint(tmp_path / "evil.pth")
    assert "pwned" not in capsys.readouterr().out


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = save_checkpoint(tmp_path / "m.pt", AlphaRefineNet(SMALL))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with open(tmp_path / "list.pt", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "list.pt")


def test_mismatched_weights_name_the_problem(tmp_path):
    state = AlphaRefineNet(SMALL).state_dict()
    state.pop("corner_head.conv5_tl.bias")
    state["corner_head.conv5_br.weight"] = torch.zeros(1, 16, 1, 1)
    torch.save({"format": "ar_ros", "version": 1, "config": SMALL.to_dict(), "state_dict": state},
               tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_network(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "1 missing: corner_head.conv5_tl.bias" in msg and "wrong shape: corner_head.conv5_br.weight" in msg


def test_nan_weights_and_future_versions_are_refused(tmp_path):
    net = AlphaRefineNet(SMALL)
    with torch.no_grad():
        net.corner_head.conv5_tl.bias.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.pt", net)
    with pytest.raises(CheckpointError, match="NaN"):
        load_network(tmp_path / "nan.pt")
    torch.save({"format": "ar_ros", "version": 99, "config": {}, "state_dict": {}}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")
