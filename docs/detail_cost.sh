#!/bin/bash
# The cost of --detail 1 and --uncertainty (issue 30): whole `geosr upscale` runs of one scene,
# the three variants alternating, two rounds, --route off (a run with the map routes nothing).
#   bash docs/detail_cost.sh SCENE.tif SCALE DTYPE [MODEL]        (DTYPE: bf16 or fp32; MODEL: --model)
# Prints "<round> <variant> <seconds> s <peak RSS> KB". Run it with nothing else on the machine.
set -e
scene=$1; scale=$2; dtype=$3
model=(); [ -n "$4" ] && model=(--model "$4")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in 1 2; do
  for variant in d0 d1 unc; do
    case $variant in d0) extra=();; d1) extra=(--detail 1);; unc) extra=(--uncertainty "$out/u.tif");; esac
    rm -f "$out/o.tif" "$out/u.tif"
    /usr/bin/time -f "$round $variant %e s %M KB" geosr upscale "$scene" "$out/o.tif" --scale "$scale" \
      --route off --dtype "$dtype" --overwrite -q "${model[@]}" "${extra[@]}" 2>&1 | tail -1
  done
done
