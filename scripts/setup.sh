#!/usr/bin/env bash
# Installs every system dependency from Debian 12 (bookworm), selects OpenBLAS-openmp, and builds memoreel with
# ccache and the shared precompiled header. Idempotent: when everything is present it only runs the (incremental)
# build. Usage: scripts/setup.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${1:-build}"

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp
  libboost-dev nlohmann-json3-dev libspdlog-dev libcli11-dev doctest-dev
  libsentencepiece-dev sentencepiece libgloo-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev ffmpeg
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-tools
  libsqlite3-dev
)

source scripts/debian_packages.sh
use_sudo setup
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then missing+=("$p"); fi
done
apt_install setup "${missing[@]}"

# The BLAS trap: the default libblas.so.3 is the reference BLAS (~6 GFLOP/s fp32). OpenBLAS-openmp shares
# LibTorch's OpenMP pool (the pthread variant's own spinning threads fight it).
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
for lib in libblas.so.3 liblapack.so.3; do
  target=/usr/lib/$MULTIARCH/openblas-openmp/$lib
  current=$(update-alternatives --query "$lib-$MULTIARCH" 2>/dev/null | sed -n 's/^Value: //p')
  if [ "$current" != "$target" ]; then
    echo "[setup] selecting $target"
    "${SUDO[@]}" update-alternatives --set "$lib-$MULTIARCH" "$target" >/dev/null
  fi
done

# ccache: the PCH needs these sloppiness settings to be cacheable.
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

JOBS=${MEMOREEL_JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
echo "[setup] building in $BUILD_DIR with $JOBS jobs"
cmake --build "$BUILD_DIR" -j "$JOBS"
