#!/usr/bin/env bash
# Usage: bare-python.sh PYTHON DIR -> prints DIR/bin/python3
#
# A Python with none of MedViewer's dependencies, made from PYTHON without a download: a copy of its
# executable plus its standard library (symlinked entry by entry) under DIR, with an empty site-packages.
# Python finds its prefix from the executable's location (the lib/pythonX.Y/os.py landmark), so the base
# site-packages of PYTHON -- and whatever a CI image pre-installed there -- is out of sight, and a venv made
# from it (`make test PYTHON=DIR/bin/python3`) sees only what `make` installs. It refuses when any of the
# project's dependencies is still importable.
set -euo pipefail
src="$1"
dir="$2"
read -r exe stdlib include ver < <("$src" -c 'import os, sys, sysconfig
print(os.path.realpath(sys.executable), sysconfig.get_path("stdlib"), sysconfig.get_path("include"),
      "%d.%d" % sys.version_info[:2])')
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib/python$ver/site-packages"
cp "$exe" "$dir/bin/python$ver"
ln -s "python$ver" "$dir/bin/python3"
for entry in "$stdlib"/*; do
    case "$(basename "$entry")" in site-packages|dist-packages) continue ;; esac
    ln -s "$entry" "$dir/lib/python$ver/$(basename "$entry")"
done
if [ -d "$include" ]; then  # C headers, for a dependency that must be built from source
    mkdir -p "$dir/include"
    ln -s "$include" "$dir/include/$(basename "$include")"
fi
py="$dir/bin/python3"
"$py" - "$dir" <<'PY'
import importlib.util
import sys

deps = ["numpy", "pydicom", "cv2", "onnxruntime", "PySide6", "platformdirs", "pydantic", "tqdm", "pynetdicom",
        "dicomweb_client", "highdicom", "psygnal", "torch", "pytest"]
found = [name for name in deps if importlib.util.find_spec(name) is not None]
if found:
    sys.exit(f"bare-python: {sys.executable} still imports {', '.join(found)} (sys.path: {sys.path})")
if sys.prefix != sys.argv[1]:
    sys.exit(f"bare-python: the copy found the prefix {sys.prefix}, not {sys.argv[1]}")
PY
"$py" -c 'import ensurepip, venv' 2>/dev/null \
    || { echo "bare-python: $src has no ensurepip/venv (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
echo "$py"
