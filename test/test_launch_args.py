"""The launch files take what the README says they take, with the node parameter table's defaults.

``launch`` / ``launch_ros`` cannot be installed here (not on PyPI for this Python), so the files are read as
Python syntax trees instead of being run.
"""
import ast
import re
from pathlib import Path

import pytest

from ar_ros.ros.launch_args import ARGUMENTS, MODEL_ARGUMENTS
from ar_ros.ros.params import BY_NAME

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = sorted((ROOT / "launch").glob("*.launch.py"))


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _literal(node):
    return node.value if isinstance(node, ast.Constant) else None


def declared(path: Path) -> dict:
    """launch argument name -> literal default (None when not a literal), as the file declares them."""
    tree = ast.parse(path.read_text())
    args = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        default = next((_literal(k.value) for k in call.keywords if k.arg == "default_value"), None)
        args[_literal(call.args[0])] = default
    if _calls(tree, "model_arguments"):
        args.update({name: None for name in ARGUMENTS})
        args.update({name: str(BY_NAME[name].default) for name in MODEL_ARGUMENTS})
    return args


def starts_refiner(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(_literal(k.value) == "ar_ros" for c in _calls(tree, "Node") for k in c.keywords if k.arg == "executable")


def readme_table() -> dict:
    """README's launch table: file -> set of argument names."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+\.launch\.py)` \| ([^|]*) \|", text, re.M)
    return {name: set(re.findall(r"`(\w+)`", args)) for name, args in rows}


def test_there_are_launch_files_and_each_parses():
    assert {p.name for p in LAUNCH} >= {"ar_ros.launch.py", "multi_camera.launch.py", "replay.launch.py",
                                         "demo.launch.py"}


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_every_launch_file_takes_use_rviz_and_every_refiner_launch_the_model_arguments(path):
    args = declared(path)
    assert "use_rviz" in args
    if path.name != "demo.launch.py":  # the demo runs the node on config/ar_ros.yaml as it is
        assert starts_refiner(path)
        assert set(MODEL_ARGUMENTS) | {"params_file"} <= set(args), sorted(args)


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_arguments_named_like_node_parameters_have_the_tables_defaults(path):
    for name, default in declared(path).items():
        # cameras: a comma-separated launch argument for a list parameter that is unset by default
        if name in BY_NAME and default is not None and BY_NAME[name].default is not None:
            assert default == str(BY_NAME[name].default), (path.name, name)


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_every_launch_configuration_used_is_declared(path):
    tree = ast.parse(path.read_text())
    used = {_literal(c.args[0]) for c in _calls(tree, "LaunchConfiguration") if c.args}
    assert used - {None} <= set(declared(path)), sorted(used - set(declared(path)))


def test_model_arguments_are_node_parameters_with_every_choice_described():
    for name in MODEL_ARGUMENTS:
        spec = BY_NAME[name]
        for choice in spec.choices:  # e.g. precision's description names bf16
            assert choice in spec.description, (name, choice)


def test_the_readme_lists_each_launch_files_arguments():
    table = readme_table()
    assert set(table) == {p.name for p in LAUNCH}
    for path in LAUNCH:
        assert table[path.name] == set(declared(path)) - {None}, path.name
