#!/bin/sh
# Installs Debian's chromium for the browser tests if /usr/bin/chromium is missing (never `playwright install`).
set -eu
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
if [ ! -x /usr/bin/chromium ]; then
  echo "error: apt-get did not install /usr/bin/chromium; the browser tests need it." >&2
  exit 1
fi
