"""litefs-py.yml: validation and the generated LiteFS config, by the same Rust code as
``litefs-py config check`` and ``litefs-py config litefs``.

Every function takes the litefs-py.yml text, or a mapping with the same keys (e.g. from Django
settings; turned into YAML by :func:`to_yaml`), and raises :class:`litefs.ConfigError` naming
the key at fault.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import _native

__all__ = ["effective_yaml", "render_litefs_yml", "to_yaml", "validate", "warnings"]

Source = str | Mapping[str, Any]


def _text(config: Source) -> str:
    return config if isinstance(config, str) else to_yaml(config)


def validate(config: Source) -> dict[str, Any]:
    """Validates litefs-py.yml; returns the effective config (defaults filled in) as a dict with
    the file's key names (``node``, ``cluster``, ``raft-addr``...)."""
    result: dict[str, Any] = json.loads(_native.validate(_text(config)))
    return result


def effective_yaml(config: Source) -> str:
    """The effective litefs-py.yml (defaults filled in), as ``litefs-py config check`` prints
    it."""
    return _native.effective_yaml(_text(config))


def render_litefs_yml(config: Source) -> str:
    """The litefs.yml that makes LiteFS follow this node's raft cluster, as ``litefs-py config
    litefs`` prints it."""
    return _native.render_litefs_yml(_text(config))


def warnings(config: Source) -> list[str]:
    """What ``litefs-py config check`` warns about: allowed, but worth knowing."""
    return _native.warnings(_text(config))


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(value))


def _key(key: Any) -> str:
    if isinstance(key, bool):
        raise TypeError(f"a boolean is not a config key: {key!r}")
    if isinstance(key, int):
        return str(key)
    key = str(key)
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def to_yaml(config: Mapping[str, Any]) -> str:
    """A mapping of plain values (str, int, float, bool, None, paths, lists, mappings) as YAML.

    Integer keys stay integers (``cluster.peers``); strings are always quoted.
    """
    lines: list[str] = []

    def emit(value: Any, indent: int) -> None:
        pad = "  " * indent
        if isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, Mapping) and v:
                    lines.append(f"{pad}{_key(k)}:")
                    emit(v, indent + 1)
                elif isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and v:
                    lines.append(f"{pad}{_key(k)}:")
                    for item in v:
                        lines.append(f"{pad}  - {_scalar(item)}")
                elif isinstance(v, Mapping):
                    lines.append(f"{pad}{_key(k)}: {{}}")
                elif isinstance(v, Sequence) and not isinstance(v, (str, bytes)):
                    lines.append(f"{pad}{_key(k)}: []")
                else:
                    lines.append(f"{pad}{_key(k)}: {_scalar(v)}")
        else:
            raise TypeError(f"expected a mapping, got {type(value).__name__}")

    emit(config, 0)
    return "\n".join(lines) + "\n"
