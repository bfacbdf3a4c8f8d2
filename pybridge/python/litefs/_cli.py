"""The ``litefs-py`` command installed by pip: the Rust command line, run in this process.

A wheel cannot carry a binary next to a PyO3 extension (PyO3/maturin#368), so the CLI is a
function of the extension. It installs its own SIGINT/SIGTERM handlers (``mount`` unmounts on
them), so Python's are set back to the defaults first.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from . import _native


def run(argv: Sequence[str]) -> int:
    """Runs ``litefs-py ARGV...`` (without the program name) and returns its exit status."""
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
