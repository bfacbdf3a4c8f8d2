"""The ``litefs-py`` command installed by pip: the Rust command line, run in this process.

A wheel cannot carry a binary next to a PyO3 extension (PyO3/maturin#368), so the CLI is a
function of the extension. It installs its own SIGINT/SIGTERM handlers (``mount`` unmounts on
them), so Python's are set back to the defaults first.

A Linux wheel carries a static LiteFS at ``litefs/_bin/litefs``; ``run`` starts that one unless
``litefs.binary`` is set (the Rust side reads ``LITEFS_PY_BUNDLED_LITEFS``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _native

BUNDLED_ENV = "LITEFS_PY_BUNDLED_LITEFS"


def bundled_litefs() -> Path | None:
    """The LiteFS this wheel carries, or ``None`` (an sdist or editable build has none)."""
    path = Path(__file__).parent / "_bin" / "litefs"
    return path if path.is_file() else None


def run(argv: Sequence[str]) -> int:
    """Runs ``litefs-py ARGV...`` (without the program name) and returns its exit status."""
    bundled = bundled_litefs()
    if bundled is not None:
        os.environ.setdefault(BUNDLED_ENV, str(bundled))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    return _native.cli_main(["litefs-py", *argv])


def main() -> None:
    """The ``litefs-py`` script: the same dispatch as ``python -m litefs`` (``config
    --settings`` renders from Django's settings; anything else is the Rust command line)."""
    from .__main__ import main as dispatch

    sys.exit(dispatch(sys.argv[1:]))
