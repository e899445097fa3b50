#!/usr/bin/env bash
# Installs everything a bare Debian machine with Python 3.11 lacks, then the project itself.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

APT_PACKAGES=(
  openssh-server openssh-client            # real sshd for the deploy tests (127.0.0.1 only)
  fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-noto-mono   # synthetic data
  fonts-lato fonts-open-sans fonts-roboto-unhinted fonts-firacode fonts-crosextra-caladea  # bench/unseen_fonts.py only
  debootstrap qemu-user-static binfmt-support zstd debian-archive-keyring   # the emulated Raspberry Pi
  chromium chromium-driver                 # a real headless browser for the device page's tests
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch first and pinned exactly: an unpinned torch can pull a multi-GB CUDA build.
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test,dev]"

# The emulated Raspberry Pi's arm64 rootfs (tests/test_emulated_pi.py), with OCR_EMULATED_PI=1
# (.ci/run sets it; 8-20 min the first time, so the flagship's set-up does not wait for it):
# built only when missing or stale, cached outside the repository (/var/cache/ocr-recipe/
# emulated-pi, OCR_EMULATED_PI_CACHE). Needs root; otherwise, or if the build fails, those tests
# skip and say why.
if [ "${OCR_EMULATED_PI:-0}" = 1 ] && [ "$(id -u)" -eq 0 ]; then
  nice -n 19 python3 tests/emulated_pi.py build \
    || echo "emulated Pi: rootfs not built (log in /var/cache/ocr-recipe/emulated-pi); its tests will skip" >&2
fi
