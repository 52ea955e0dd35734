"""Humble (rclpy 3.3): every rclpy import is in the audit table (docs/humble.md), and the fallbacks for
what Humble lacks run here with the newer module hidden."""
import ast
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AUDIT = (ROOT / "docs" / "humble.md").read_text()


def rclpy_imports():
    """(module, name) for every `from rclpy... import name` and `import rclpy` under ar_ros/."""
    found = set()
    for path in (ROOT / "ar_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rclpy":
                found.update((node.module, a.name) for a in node.names)
            elif isinstance(node, ast.Import):
                found.update((a.name, "") for a in node.names if a.name.split(".")[0] == "rclpy")
    return found


def test_every_rclpy_import_is_audited_for_humble():
    rows = [line for line in AUDIT.splitlines() if line.startswith("| `rclpy")]
    missing = []
    for module, name in sorted(rclpy_imports()):
        row = " ".join(r for r in rows if r.startswith(f"| `{module}`"))
        if not row or (name and f"`{name}" not in row and f" {name}" not in row):
            missing.append(f"{module}: {name}" if name else module)
    assert not missing, f"add these to docs/humble.md: {missing}"


def load_copy(relpath, name):
    """A fresh copy of one of our modules (the imported one stays as it is for other tests)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_rclpy_event_handler_qos_events_come_from_qos_event(monkeypatch):
    pytest.importorskip("rclpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Jazzy's qos_event is a deprecated shim over event_handler
        from rclpy import qos_event
    monkeypatch.setitem(sys.modules, "rclpy.event_handler", None)  # import raises ImportError, as on Humble
    qos = load_copy("ar_ros/ros/qos.py", "qos_as_on_humble")  # without the fallback: ImportError here
    assert qos.SubscriptionEventCallbacks is qos_event.SubscriptionEventCallbacks
    callbacks = qos.subscription_events(lambda text: None, "/image")
    assert callbacks.incompatible_qos is not None


def test_without_the_events_executor_the_single_threaded_one_spins(monkeypatch):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from ar_ros.ros.executor import make_executor
    monkeypatch.setitem(sys.modules, "rclpy.experimental", None)
    monkeypatch.delenv("AR_ROS_EXECUTOR", raising=False)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        ex = make_executor(context=ctx)
        assert type(ex) is SingleThreadedExecutor
        ex.shutdown()
    finally:
        rclpy.try_shutdown(context=ctx)
