#!/usr/bin/env bash
# System packages the tests use (Debian/Ubuntu, as root): a real PACS (Orthanc with its DICOMweb plugin)
# and dciodvfy (dicom3tools), which validates every DICOM object MedViewer writes; dcmtk (storescp, storescu,
# dcmqrscp: the uncompressed-only SCP of the PACS tests and the baseline of benchmarks/bench_serve.py); the DejaVu fonts the
# documentation's screenshots are drawn with, and Xvfb with the X libraries Qt's xcb plugin loads, for
# `make screenshots` on a machine without a display. Idempotent; without
# root or apt-get it says so and exits 0 (the tests that need these then skip with that reason).
set -euo pipefail
PACKAGES=(orthanc orthanc-dicomweb dicom3tools dcmtk fonts-dejavu-core fontconfig xvfb xauth libxcb-cursor0 libxcb-icccm4
          libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xinerama0
          libxcb-xkb1 libxkbcommon-x11-0 libegl1 libdbus-1-3)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-packages: not root or no apt-get; missing ${missing[*]} (tests that need them will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# the Debian package starts an Orthanc service on 4242/8042 where it can; tests start their own on free ports
if command -v service >/dev/null; then service orthanc stop >/dev/null 2>&1 || true; fi
echo "system-packages: installed ${missing[*]}"
