#!/usr/bin/env bash
# Runs the sweeps behind docs/RESULTS.md's sweep section on an embedded local Ray and regenerates that
# section.  Finished points are kept (hil sweep --resume), so an interrupted regeneration continues.
#   SWEEPS_RUNS=folder (default sweeps-runs), SWEEPS="delta_g_th_factor write_noise weight_scale training_length" (which to run),
#   PRESETS=1 also runs seeds x methods on each device preset (presets_*.toml; long),
#   CHOOSE_DEFAULTS=1 also runs the tuning of the training defaults (choose_defaults.toml, tune mode; long) and
#   copies its tune.json and tune.md to examples/results/ (the record docs/DESIGN.md cites),
#   KEEP_STALE=1 keeps points made by other code instead of making them again (docs/DESIGN.md, "Code provenance").
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${SWEEPS_RUNS:-sweeps-runs}
names=${SWEEPS:-delta_g_th_factor write_noise weight_scale training_length}
if [ "${PRESETS:-0}" = 1 ]; then names="$names presets_default presets_noisy2x presets_paper"; fi
args=()
for name in $names; do
    resume=(); [ -f "$runs/$name/sweep.json" ] && resume=(--resume) && [ "${KEEP_STALE:-0}" = 1 ] && resume+=(--keep-stale)
    hil sweep "examples/sweeps/$name.toml" --out "$runs/$name" --quiet "${resume[@]}"
    args+=(--sweep "$name=$runs/$name")
done
python examples/sweeps/render_sweeps.py "${args[@]}" --doc docs/RESULTS.md
if [ "${CHOOSE_DEFAULTS:-0}" = 1 ]; then
    resume=(); [ -f "$runs/choose_defaults/sweep.json" ] && resume=(--resume) && [ "${KEEP_STALE:-0}" = 1 ] && resume+=(--keep-stale)
    hil sweep examples/sweeps/choose_defaults.toml --out "$runs/choose_defaults" --quiet "${resume[@]}"
    cp "$runs/choose_defaults/tune.json" "$runs/choose_defaults/tune.md" examples/results/
fi
