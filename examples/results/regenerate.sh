#!/usr/bin/env bash
# Regenerates docs/RESULTS.md from scratch: `hil demo` on the evaluation seeds for each device preset,
# then the renderer, then the sweeps section (examples/sweeps/regenerate.sh: the ΔGth-factor,
# write-noise, weight-scale and training-length sweeps; PRESETS=1 adds the per-preset sweeps, CHOOSE_DEFAULTS=1 the tuning), so this one
# command regenerates the whole document.  The evaluation seeds (0-9) are disjoint from the tuning seeds (100-104) on which
# the training defaults were chosen (examples/sweeps/choose_defaults.toml; its record examples/results/tune.json).
# Finished parts are kept (demo --resume), so an interrupted regeneration continues where it stopped; parts made by
# other code (another source_fingerprint) are made again unless KEEP_STALE=1 (docs/DESIGN.md, "Code provenance").
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RESULTS_RUNS:-results-runs}
seeds=${SEEDS:-0-9}
keep=(); [ "${KEEP_STALE:-0}" = 1 ] && keep=(--keep-stale)
hil demo --board emu --seeds "$seeds" --out "$runs/default" --quiet --resume "${keep[@]}"
hil demo --board "emu?preset=noisy2x" --seeds "$seeds" --out "$runs/noisy2x" --quiet --resume "${keep[@]}"
python examples/results/render_results.py --demo "default=$runs/default" --demo "noisy2x=$runs/noisy2x" \
    --tuning examples/results/tune.json --out docs/RESULTS.md
bash examples/sweeps/regenerate.sh
