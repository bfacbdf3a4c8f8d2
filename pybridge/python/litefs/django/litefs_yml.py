"""litefs-py.yml and litefs.yml from Django settings: ``python -m litefs config --settings X``.

``settings.LITEFS["CONFIG"]`` holds litefs-py.yml, as a dict with the file's keys or as the
path of a file. ``mount.dir`` defaults to ``LITEFS["MOUNT"]`` when that is set, so the app and
the daemon agree on the mount (a different value in both is an error). Both documents come from
the Rust code the ``litefs-py`` command uses.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import config as litefs_config
from .._errors import ConfigError
from . import settings as litefs_settings


def litefs_py_yml() -> str:
    """litefs-py.yml text from ``settings.LITEFS`` (validated by the caller)."""
    s = litefs_settings.get()
    given_mount = litefs_settings.raw().get("MOUNT")
    source = s.config
    if source is None:
        raise ConfigError("settings.LITEFS['CONFIG'] is not set", "CONFIG")
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_text()
    if not isinstance(source, Mapping):
        raise ConfigError(
            f"settings.LITEFS['CONFIG'] must be a dict or a path, not {type(source).__name__}",
            "CONFIG",
        )
    data: dict[str, Any] = copy.deepcopy(dict(source))
    mount = data.get("mount")
    if given_mount:
        if not isinstance(mount, Mapping):
            mount = {}
        mount = dict(mount)
        if "dir" in mount and os.fspath(mount["dir"]) != os.fspath(given_mount):
            raise ConfigError(
                f"mount.dir: {mount['dir']} differs from settings.LITEFS['MOUNT'] "
                f"({given_mount}); set one of them",
                "mount.dir",
            )
        mount["dir"] = os.fspath(given_mount)
        data["mount"] = mount
    return litefs_config.to_yaml(data)


def render() -> tuple[str, str]:
    """(effective litefs-py.yml, litefs.yml), both validated."""
    text = litefs_py_yml()
    return litefs_config.effective_yaml(text), litefs_config.render_litefs_yml(text)


def _write_private(path: Path, text: str) -> None:
    """Writes ``path`` with mode 0600, whole or not at all (a temp file renamed over it): the
    configs name the lease API and the secret's file, as ``run``'s own generated files do."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litefs config",
        description="Render litefs-py.yml and LiteFS's litefs.yml from settings.LITEFS['CONFIG'].",
    )
    parser.add_argument("--settings", required=True, help="the Django settings module")
    parser.add_argument("--pythonpath", help="a directory to add to sys.path first")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="write litefs-py.yml and litefs.yml there instead of printing both",
    )
    args = parser.parse_args(argv)
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    try:
        own, litefs = render()
    except (ConfigError, OSError, TypeError) as e:
        print(f"litefs config: {e}", file=sys.stderr)
        return 1
    for warning in litefs_config.warnings(own):
        print(f"warning: {warning}", file=sys.stderr)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        _write_private(args.output_dir / "litefs-py.yml", own)
        _write_private(args.output_dir / "litefs.yml", litefs)
        print(f"wrote {args.output_dir}/litefs-py.yml and litefs.yml", file=sys.stderr)
        return 0
    sys.stdout.write("# litefs-py.yml\n" + own + "---\n# litefs.yml\n" + litefs)
    return 0
