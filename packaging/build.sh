#!/usr/bin/env bash
# Build the one-folder app dist/kvgui/ (run it as dist/kvgui/kvgui) with PyInstaller.
#
#   packaging/build.sh            use the active virtual environment (or $PYTHON) if kvgui is
#                                 installed in it, else make build/venv and install kvgui there
#   PYTHON=/x/bin/python packaging/build.sh   use that interpreter
#
# kvgui, PySide6 and llama-cpp-python must be importable by that Python: the bundle carries
# exactly the llama-cpp-python build installed there (CPU, or CUDA if built with
# CMAKE_ARGS="-DGGML_CUDA=on"). PyInstaller is installed into it if missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PIP_DISABLE_PIP_VERSION_CHECK=1

py=${PYTHON:-}
if [ -z "$py" ] && [ -n "${VIRTUAL_ENV:-}" ]; then py="$VIRTUAL_ENV/bin/python"; fi
if [ -z "$py" ] || ! "$py" -c "import kvgui, llama_cpp, PySide6" 2>/dev/null; then
    if [ ! -x build/venv/bin/python ]; then
        echo "build.sh: making build/venv and installing kvgui into it" >&2
        python3 -m venv build/venv
    fi
    py=build/venv/bin/python
    "$py" -m pip install --quiet .
fi
if ! "$py" -c "import PyInstaller" 2>/dev/null; then
    "$py" -m pip install --quiet "pyinstaller>=6.10"
fi

"$py" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/kvgui.spec

# Desktop integration files beside the program: cp -r dist/kvgui/share ~/.local/ installs
# them (with dist/kvgui/kvgui on PATH as kvgui).
share=dist/kvgui/share
mkdir -p "$share/applications" "$share/metainfo"
cp packaging/linux/io.github.kvgui.desktop "$share/applications/"
cp packaging/linux/io.github.kvgui.metainfo.xml "$share/metainfo/"
if [ -d resources/icons/hicolor ]; then
    mkdir -p "$share/icons"
    cp -r resources/icons/hicolor "$share/icons/"
    mkdir -p "$share/icons/hicolor/scalable/apps"
    cp resources/kvgui.svg "$share/icons/hicolor/scalable/apps/kvgui.svg"
fi

size=$(du -sh dist/kvgui | cut -f1)
echo "build.sh: built dist/kvgui ($size); try: dist/kvgui/kvgui --version" >&2
