#!/bin/sh
# The install steps of deploy/docker/Dockerfile, as a script CI runs too (scripts/test, CI=true):
#   install.sh WHEEL
# Installs what litefs-py needs at run time on Debian/Ubuntu (fuse3: fusermount3 and
# /etc/fuse.conf), then the wheel, which carries LiteFS, into $PYTHON (default python3), and
# checks that the command and the bundled LiteFS run. No Rust, Go or compiler needed.
set -eu
wheel=${1:?usage: install.sh WHEEL}
python=${PYTHON:-python3}

if ! command -v fusermount3 >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
  rm -rf /var/lib/apt/lists/*
fi
"$python" -m pip install --no-cache-dir --disable-pip-version-check --quiet "$wheel"

# The command is on the interpreter's PATH; it prints its own version and the bundled LiteFS's.
bindir=$("$python" -c 'import sys, sysconfig; print(sysconfig.get_path("scripts"))')
"$bindir/litefs-py" version
"$python" -c 'import litefs, litefs.django; print("import litefs: ok")'
