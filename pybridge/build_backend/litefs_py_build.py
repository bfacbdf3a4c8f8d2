"""The PEP 517 backend of litefs-py's source builds: maturin's, after a check that Rust is there.

A source build (the sdist, or ``pip install ./pybridge``) compiles the Rust extension. Without
``cargo`` maturin would try to download a Rust toolchain from the internet, and offline it fails
with a traceback that names neither Rust nor what to do. This backend refuses at once with a
message that says what a source build needs; prebuilt wheels need none of it
(docs/packaging.md, "The sdist").
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import maturin  # type: ignore[import-untyped]

_NEEDS = """\
litefs-py: building from source needs Rust (cargo 1.85 or newer) on PATH, and none was found.
  - Install Rust (https://rustup.rs), or point CARGO at a cargo binary, and run pip again.
  - Or install a prebuilt wheel instead: it needs neither Rust nor Go, and carries LiteFS.
A source build carries no LiteFS either: install LiteFS v0.5.14 on PATH (built with Go:
`go install github.com/superfly/litefs/cmd/litefs@v0.5.14`) or set `litefs.binary` in
litefs-py.yml.
"""


def _require_rust() -> None:
    cargo = os.environ.get("CARGO") or shutil.which("cargo")
    if not cargo or not os.access(cargo, os.X_OK):
        sys.stderr.write(_NEEDS)
        raise SystemExit(1)


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return list(maturin.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    return list(maturin.get_requires_for_build_sdist(config_settings))


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return list(maturin.get_requires_for_build_editable(config_settings))


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    _require_rust()
    return str(maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings))


def build_wheel(
    wheel_directory: str,
    config_settings: Any = None,
    metadata_directory: str | None = None,
) -> str:
    _require_rust()
    return str(maturin.build_wheel(wheel_directory, config_settings, metadata_directory))


def build_editable(
    wheel_directory: str,
    config_settings: Any = None,
    metadata_directory: str | None = None,
) -> str:
    _require_rust()
    return str(maturin.build_editable(wheel_directory, config_settings, metadata_directory))


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    _require_rust()
    return str(maturin.build_sdist(sdist_directory, config_settings))


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Any = None
) -> str:
    _require_rust()
    return str(maturin.prepare_metadata_for_build_editable(metadata_directory, config_settings))
