#!/usr/bin/env bash
# A contact sheet of a model's text-to-video: one row per prompt, one column per seed, each cell a late frame
# of the generated clip. It is how a trained stage is looked at (do the colour words change the walls, do the
# characters come out) before it is committed; the clips stay beside the sheet for a closer look.
#
#   scripts/contact_sheet.sh MODEL_JSON OUT_DIR [SEEDS] [PROMPT ...]
#
# SEEDS is a comma list (default 1,2,3); without prompts, the captions below are used. Writes
# OUT_DIR/sheet.png, OUT_DIR/rNN-sS.mp4 and OUT_DIR/legend.txt (row number and prompt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    sed -n 2,9p "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
model=$1
out=$2
seeds=${3:-1,2,3}
shift $(($# < 3 ? $# : 3))
prompts=("$@")
if [ ${#prompts[@]} -eq 0 ]; then
    prompts=(
        "the green striped fox walks into the red room"
        "the purple checked bear walks into the teal room"
        "cut to the yellow room, the fox walks in"
        "cut to the red room, the fox walks in"
        "the blue street"
        "cut to the beach"
    )
fi
memoreel=${MEMOREEL:-build/memoreel}
frames=${FRAMES:-33}
threads=${THREADS:-2}

mkdir -p "$out"
rm -f "$out"/cell-*.png "$out"/legend.txt "$out"/r[0-9][0-9]-s*.mp4
IFS=, read -r -a seed_list <<<"$seeds"
cell=0
for r in "${!prompts[@]}"; do
    printf 'row %d: %s\n' "$((r + 1))" "${prompts[$r]}" | tee -a "$out/legend.txt"
    for s in "${seed_list[@]}"; do
        clip=$(printf '%s/r%02d-s%s.mp4' "$out" "$((r + 1))" "$s")
        "$memoreel" --threads "$threads" generate --model "$model" --prompt "${prompts[$r]}" --seed "$s" \
            --frames "$frames" --out "$clip" >"$out/generate.log" 2>&1 || {
            cat "$out/generate.log" >&2
            exit 1
        }
        # The last frame: by then the place and the character of the caption have had time to appear.
        ffmpeg -loglevel error -y -sseof -0.1 -i "$clip" -frames:v 1 "$(printf '%s/cell-%03d.png' "$out" "$cell")"
        cell=$((cell + 1))
    done
done
ffmpeg -loglevel error -y -framerate 1 -i "$out/cell-%03d.png" \
    -vf "pad=iw+4:ih+4:2:2:white,tile=${#seed_list[@]}x${#prompts[@]}" -frames:v 1 "$out/sheet.png"
rm -f "$out"/cell-*.png "$out/generate.log"
echo "contact sheet: $out/sheet.png (${#prompts[@]} prompts x ${#seed_list[@]} seeds)"
