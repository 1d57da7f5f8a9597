#!/usr/bin/env bash
# Installs the Colin27 brain template (Debian's mricron-data) when we are root and apt-get exists.
# The simulator falls back to nilearn's bundled MNI152 template when this file is absent.
set -u
TEMPLATE=/usr/share/mricron/templates/ch2.nii.gz
if [ -f "$TEMPLATE" ]; then echo "brain template: $TEMPLATE"; exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "brain template: not root or no apt-get; using nilearn's MNI152 fallback"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
(apt-get install -y -q mricron-data >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mricron-data >/dev/null 2>&1)) \
  && echo "brain template: installed $TEMPLATE" \
  || echo "brain template: mricron-data install failed; using nilearn's MNI152 fallback"
