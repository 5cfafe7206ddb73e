#!/usr/bin/env bash
# Install MedViewer's desktop launcher and icon for the current user (freedesktop.org: the menu entry in
# $XDG_DATA_HOME/applications, the scalable icon in the hicolor theme). No root needed.
#
#   dist/medviewer/install-desktop.sh         from the desktop bundle: the launcher starts that bundle
#   packaging/install-desktop.sh [COMMAND]    from a checkout: the launcher runs COMMAND (default: the
#                                             'medviewer' found on PATH, e.g. in your venv)
#   ... --uninstall                           remove both again
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
apps="$data/applications"
icons="$data/icons/hicolor/scalable/apps"
if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$apps/medviewer.desktop" "$icons/medviewer.svg"
    echo "removed $apps/medviewer.desktop and $icons/medviewer.svg"
    exit 0
fi
if [ -x "$here/medviewer" ] && [ -d "$here/_internal" ]; then  # a PyInstaller bundle
    cmd="$here/medviewer"
    icon="$here/_internal/medviewer/_resources/icons/medviewer.svg"
else
    cmd="${1:-$(command -v medviewer || true)}"
    icon="$here/../resources/icons/medviewer.svg"
    if [ -z "$cmd" ]; then
        echo "install-desktop: no 'medviewer' on PATH; activate its venv or give the command to run" >&2
        exit 1
    fi
    cmd="$(command -v "$cmd" || true)"
    if [ -z "$cmd" ] || [ ! -x "$cmd" ]; then
        echo "install-desktop: ${1:-medviewer} is not an executable command" >&2
        exit 1
    fi
    cmd="$(cd "$(dirname "$cmd")" && pwd)/$(basename "$cmd")"
fi
for f in "$here/medviewer.desktop" "$icon"; do
    [ -f "$f" ] || { echo "install-desktop: $f is missing" >&2; exit 1; }
done
mkdir -p "$apps" "$icons"
install -m 644 "$icon" "$icons/medviewer.svg"
# Exec: the absolute command, quoted as the Desktop Entry Specification asks ("\" escapes ", `, $ and \)
quoted="$(printf '%s' "$cmd" | sed -e 's/[\\"`$]/\\&/g')"
sed -e "s|^Exec=.*|Exec=\"${quoted//|/\\|}\" %F|" -e "s|^TryExec=.*||" "$here/medviewer.desktop" > "$apps/medviewer.desktop"
chmod 644 "$apps/medviewer.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$apps" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
echo "installed $apps/medviewer.desktop (Exec: $cmd) and $icons/medviewer.svg"
