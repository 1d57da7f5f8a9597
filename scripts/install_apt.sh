#!/usr/bin/env bash
# Usage: scripts/install_apt.sh PACKAGE FILE WHY
# Installs Debian's PACKAGE when FILE is missing, if we are root and apt-get exists (apt-get update once if the
# first try fails). Never fails: prints one line saying what happened and what is used instead (WHY).
#   chromium: the headless render check of the compare.py report (tests/test_compare_sources.py).
set -u
PACKAGE=$1 FILE=$2 WHY=$3
if [ -e "$FILE" ]; then echo "$PACKAGE: $FILE"; exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "$PACKAGE: not root or no apt-get; $WHY"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
(apt-get install -y -q "$PACKAGE" >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$PACKAGE" >/dev/null 2>&1)) \
  && echo "$PACKAGE: installed $FILE" \
  || echo "$PACKAGE: apt-get install failed; $WHY"
