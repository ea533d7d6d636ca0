"""The layer is a package of its own: it imports nothing of this project, so it can be
published alone."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import channels_redis_cluster

ALLOWED = {"channels", "redis", "msgpack", "channels_redis_cluster"}


def test_imports_only_the_standard_library_channels_redis_and_msgpack():
    root = Path(channels_redis_cluster.__file__).parent
    found: set[str] = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    foreign = {name for name in found if name not in ALLOWED and name not in sys.stdlib_module_names}
    assert not foreign, f"imports outside the package's dependencies: {sorted(foreign)}"
    assert {"channels", "redis", "msgpack"} <= found
