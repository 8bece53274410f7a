#!/usr/bin/env bash
# Regenerate the bundled sample data set (deterministic: same seed, same files).
# 2000 particles, box 40, 3 Å/px (Nyquist 6 Å), SNR 0.1, defocus 1-3 µm, shifts up to +-3 px, float16 stack.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d ./.regen.XXXX)
cryolive simulate --out "$tmp/data" --n 2000 --box 40 --apix 3 --snr 0.1 --seed 7 --max-shift 3 --float16
for f in particles.star particles.mrcs reference.mrc params.json; do mv -f "$tmp/data/$f" "./$f"; done
mkdir -p truth && mv -f "$tmp/data/truth/"* truth/
cp -f truth/truth_map.mrc truth_map.mrc
rm -rf "$tmp"
ls -la . truth
