#!/usr/bin/env bash
# How much a clip jumps at the seams between latent frames: the causal VAE decodes latent frame 0 to pixel
# frame 0 and latent frame k >= 1 to pixel frames 4k-3..4k, so a DiT that has not learnt motion gives clips
# whose 4-frame groups are steady in themselves but differ from one group to the next. Prints, per file, the
# mean absolute grey-level change between consecutive frames (0..255, on an 80x48 grey copy) from frame 0 to 1
# (the first latent frame has its own path through the VAE), across the later seams and inside a group, and
# the ratio of the later seams to the inside: near 1 for smooth motion, well above 1 for a clip that jumps.
#
#   scripts/temporal_jumps.sh CLIP.mp4 [CLIP.mp4 ...]
set -euo pipefail
if [ $# -eq 0 ]; then
    sed -n 2,7p "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
for clip in "$@"; do
    ffmpeg -v error -i "$clip" -vf scale=80:48,format=gray -f rawvideo - |
        perl -e '
            binmode STDIN;
            my $n = 80 * 48;
            my ($prev, $i, $first, @seam, @inside);
            while (read(STDIN, my $buf, $n) == $n) {
                my @px = unpack("C*", $buf);
                if (defined $prev) {
                    my $d = 0;
                    $d += abs($px[$_] - $prev->[$_]) for 0 .. $n - 1;
                    # frame i starts a new latent group when i == 1 or (i - 1) % 4 == 0
                    if ($i == 1) { $first = $d / $n }
                    elsif (($i - 1) % 4 == 0) { push @seam, $d / $n }
                    else { push @inside, $d / $n }
                }
                $prev = \@px;
                $i++;
            }
            sub mean { my $s = 0; $s += $_ for @_; @_ ? $s / @_ : 0 }
            my ($s, $w) = (mean(@seam), mean(@inside));
            printf "%-44s frames %3d  first %6.2f  seams %6.2f  inside %6.2f  ratio %5.2f\n", $ARGV[0], $i,
                $first // 0, $s, $w, $w > 0 ? $s / $w : 0;
        ' "$clip"
done
