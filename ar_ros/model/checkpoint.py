"""Reading and writing refiner weights.

Three inputs are accepted by :func:`load_checkpoint`:

* our own format: ``{"format": "ar_ros", "version", "config", "state_dict", "meta"}``, loaded with
  ``weights_only=True``;
* a plain state_dict (optionally with a DDP ``module.`` prefix), also ``weights_only=True``;
* the authors' ltr training checkpoint (``SEcmnet_ep0040-c.pth.tar``): a pickled dict whose ``net`` entry is
  the state_dict, next to pickled ``ltr.*`` training objects. Those objects are replaced by inert stubs
  while unpickling; any other non-tensor global is refused, so no code from the file is ever run.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .network import AUTHORS_CONFIG, AlphaRefineNet, NetConfig
from ..errors import ArRosError

FORMAT = "ar_ros"
VERSION = 1
_AUTHORS_MODULES = ("ltr", "pytracking", "dlframework")
_SAFE_EXTRA = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "slice"), ("builtins", "complex"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class CheckpointError(ArRosError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the network."""


class _Stub(dict):
    """Inert stand-in for a pickled training object (settings, stats, constructor)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - never runs file code
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self["__state__"] = state

    def append(self, item: Any) -> None:
        self.setdefault("__items__", []).append(item)

    def extend(self, items: Any) -> None:
        self.setdefault("__items__", []).extend(items)


def _torch_safe_globals() -> set:
    try:  # the allowlist torch itself uses for weights_only=True
        from torch import _weights_only_unpickler as wou
        return {tuple(key.rsplit(".", 1)) for key in wou._get_allowed_globals()}
    except Exception:  # pragma: no cover - private API moved; fall back to the tensor rebuilders
        return {("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter",
                                               "_rebuild_tensor", "_rebuild_device_tensor_from_numpy")}


class _StubbingUnpickler(pickle.Unpickler):
    allowed: set = set()

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _AUTHORS_MODULES:
            return type(name, (_Stub,), {"__module__": "ar_ros.model.checkpoint._stubs"})
        if (module, name) in self.allowed or (module, name) in _SAFE_EXTRA or \
                (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to unpickle '{module}.{name}': not a tensor or an authors' "
                              "training object")


def _stubbing_pickle_module() -> SimpleNamespace:
    _StubbingUnpickler.allowed = _torch_safe_globals()
    return SimpleNamespace(Unpickler=_StubbingUnpickler, load=lambda f, **kw: _StubbingUnpickler(f, **kw).load(),
                           __name__="ar_ros_stubbing_pickle")


def _read(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of non-checkpoints
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Weights only" not in str(err):
            raise CheckpointError(f"{path}: not a torch checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint, the file is truncated or not a torch "
                              f"checkpoint ({_first_line(err)})") from None
    # Not plain tensors: an authors' ltr checkpoint holds pickled training objects.
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stubbing_pickle_module())
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # any unpickling failure is a bad file, reported in one line
        raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> NetConfig:
    """Guess depth, crop size and layout of a bare state_dict from its keys and shapes."""
    prefix = "feature_extractor."
    if prefix + "conv1.weight" not in state_dict or "neck.post_corr.0.weight" not in state_dict:
        raise CheckpointError("state_dict has no 'feature_extractor.conv1.weight' or "
                              "'neck.post_corr.0.weight': not an Alpha-Refine network")
    n_layer3 = len({k.split(".")[2] for k in state_dict if k.startswith(prefix + "layer3.")})
    bottleneck = any(k.startswith(prefix + "layer1.0.conv3") for k in state_dict)
    depth = 50 if bottleneck else {2: 18, 6: 34}.get(n_layer3, 0)
    if not depth:
        raise CheckpointError(f"cannot tell the backbone depth ({n_layer3} blocks in layer3)")
    cells = state_dict["neck.post_corr.0.weight"].shape[1]
    half = int(round(cells ** 0.5))
    with_top = any(k.startswith(prefix + "layer4.") for k in state_dict)
    return NetConfig(depth=depth, input_size=half * 2 * 16, with_top=with_top,
                     crop_mode="exact" if with_top else "clean")


def load_checkpoint(path: str | os.PathLike) -> Tuple[Dict[str, torch.Tensor], NetConfig, Dict[str, Any]]:
    """Read any supported checkpoint and return ``(state_dict, config, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _read(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if int(obj.get("version", -1)) > VERSION:
            raise CheckpointError(f"{path}: format version {obj.get('version')} is newer than this ar_ros "
                                  f"reads ({VERSION}); upgrade ar_ros")
        missing = [k for k in ("config", "state_dict") if k not in obj]
        if missing:
            raise CheckpointError(f"{path}: ar_ros checkpoint lacks {missing}")
        try:
            config = NetConfig.from_dict(dict(obj["config"]))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad config in checkpoint: {err}") from None
        return dict(obj["state_dict"]), config, dict(obj.get("meta", {}))
    if isinstance(obj, Mapping) and "net" in obj and _is_state_dict(obj["net"]):
        state = _strip_prefix(obj["net"])
        meta = {"source": "authors", "epoch": obj.get("epoch"), "net_type": obj.get("net_type")}
        return state, _authors_or_inferred(state), meta
    if _is_state_dict(obj):
        state = _strip_prefix(obj)
        return state, infer_config(state), {"source": "state_dict"}
    raise CheckpointError(f"{path}: not an Alpha-Refine checkpoint (expected an ar_ros checkpoint, an "
                          f"authors' training checkpoint with a 'net' entry, or a state_dict)")


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _authors_or_inferred(state: Mapping[str, torch.Tensor]) -> NetConfig:
    config = infer_config(state)
    return AUTHORS_CONFIG if config == AUTHORS_CONFIG else config


def build_network(state_dict: Mapping[str, torch.Tensor], config: NetConfig, source: str = "") -> AlphaRefineNet:
    """Create the network for ``config`` and load ``state_dict`` strictly, with a readable error."""
    net = AlphaRefineNet(config)
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(f"{source or 'checkpoint'} does not fit the {config.depth}-layer network "
                              f"(input {config.input_size}): " + "; ".join(parts))
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{source or 'checkpoint'}: tensor {k} holds NaN or inf")
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def load_network(path: str | os.PathLike) -> Tuple[AlphaRefineNet, Dict[str, Any]]:
    """Load a checkpoint file into a ready network in eval mode; returns ``(net, meta)``."""
    state, config, meta = load_checkpoint(path)
    return build_network(state, config, source=str(path)), meta


def _fits_half(t: torch.Tensor) -> bool:
    """fp16 storage only where it is lossless enough: BN running statistics after the unnormalised
    correlation reach values far beyond the fp16 range, so those (and any large tensor) stay fp32."""
    return t.is_floating_point() and bool(torch.isfinite(t).all()) and float(t.abs().max()) < 6.0e4 \
        if t.numel() else False


def save_checkpoint(path: str | os.PathLike, net: AlphaRefineNet, meta: Optional[Dict[str, Any]] = None,
                    half: bool = False, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``net`` in our format, atomically (temp file + rename). ``half`` stores fp16 weights."""
    state = {k: (v.half() if half and _fits_half(v) else v).detach().cpu().clone()
             for k, v in net.state_dict().items()}
    return write_checkpoint(path, net.config, state, meta, extra)


def write_checkpoint(path: str | os.PathLike, config: NetConfig, state: Mapping[str, torch.Tensor],
                     meta: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``state`` (tensors stored as given: their dtypes are kept) and ``config`` in our format,
    atomically (temp file + rename)."""
    path = Path(path)
    payload: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
                               "state_dict": dict(state), "meta": dict(meta or {})}
    if extra:
        payload.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def merge_quality_head(base: str | os.PathLike, head: str | os.PathLike, out: str | os.PathLike,
                       meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``base``'s checkpoint with the quality head of ``head`` (a checkpoint of the same network
    with a head, e.g. trained by ``train --quality-only`` from ``base``): every tensor of ``base`` is
    kept as stored (same values, same dtypes: the boxes and masks do not change), the head's tensors are
    added as they are in ``head``, ``meta`` updates ``base``'s. The head must have been trained on
    ``base``'s weights (compared in fp32), else :class:`CheckpointError`."""
    state, config, base_meta = load_checkpoint(base)
    head_state, head_config, _ = load_checkpoint(head)
    if not head_config.quality_head:
        raise CheckpointError(f"{head}: has no quality head")
    if replace(head_config, quality_head=False) != replace(config, quality_head=False):
        raise CheckpointError(f"{head}: its network ({head_config}) is not {base}'s ({config})")
    differ = [k for k, v in state.items() if not k.startswith("quality_head.") and
              not torch.equal(v.float(), head_state[k].float())]
    if differ:
        raise CheckpointError(f"{head}: its head was trained on other weights than {base}'s ({len(differ)} "
                              f"tensors differ, e.g. {differ[0]})")
    merged = {k: v for k, v in state.items() if not k.startswith("quality_head.")}
    merged.update({k: v for k, v in head_state.items() if k.startswith("quality_head.")})
    return write_checkpoint(out, replace(config, quality_head=True), merged, {**base_meta, **(meta or {})})
