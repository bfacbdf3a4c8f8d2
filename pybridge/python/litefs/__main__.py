"""``python -m litefs ARGS``: the ``litefs-py`` command.

``python -m litefs config --settings mysite.settings`` renders litefs-py.yml and the LiteFS
config from Django's ``settings.LITEFS`` (see :mod:`litefs.django.litefs_yml`); anything else is
the ``litefs-py`` command line.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["config"] and any(
        a == "--settings" or a.startswith("--settings=") for a in argv
    ):
        from .django.litefs_yml import main as django_config

        return django_config(argv[1:])
    from ._cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
