#!/usr/bin/env bash
# Smoke test of one step image, run inside `podman build` (containers/smoke/Dockerfile) as the image's user.
# Each step runs its own CLI on the Galaxy test data (real Zheng 2017 PBMC cells, small) and checks its outputs.
set -euo pipefail
step=$1
data=${CELLPIX_SMOKE_DATA:-$(dirname "$0")/data}
out=$(mktemp -d)
cellpix --version
case $step in
    integrate)
        cellpix integrate "$data/reference.h5ad" -o "$out/ref.h5ad" --n-top-genes 400 --min-genes 100 --report "$out/qc"
        cellpix integrate "$data/query.h5ad" --reference "$data/reference_integrated.h5ad" --method combat \
            -o "$out/query.h5ad" --report "$out/mixing"
        test -s "$out/ref.h5ad" && test -s "$out/qc/qc.json" && test -s "$out/mixing/integration.json" ;;
    integrate-r)
        cellpix integrate "$data/query.h5ad" --reference "$data/reference_integrated.h5ad" --method seurat \
            -o "$out/query.h5ad"
        test -s "$out/query.h5ad" ;;
    image)
        cellpix image "$data/reference_integrated.h5ad" -o "$out/layout" --method pca --max-cells 200
        test -s "$out/layout/layout.json" && test -s "$out/layout/layout.png" ;;
    train)
        cellpix train "$data/reference_integrated.h5ad" --layout "$data/layout.json" --labels cell_type \
            --hierarchy-from-obs lineage:cell_type --preset cpu --epochs 1 --batch-size 32 -o "$out/model.cellpix" \
            --checkpoint-dir "$out/ckpt" --report-dir "$out/report" --quiet
        test -s "$out/model.cellpix" ;;
    annotate)
        # a model with the default read-out (readout.cellpix): it runs in NumPy, and this image has no torch
        cellpix annotate "$data/query.h5ad" -m "$data/readout.cellpix" -o "$out/annotated.h5ad" \
            --table "$out/cells.csv" --plots "$out/plots" --quiet
        # every query cell gets a base type and a subtype
        test "$(wc -l < "$out/cells.csv")" -eq 61 ;;
    explain)
        cellpix explain "$data/query.h5ad" -m "$data/model.cellpix" -o "$out/shap.csv" --labels cell_type \
            --levels base --cells-per-class 3 --nsamples 4 --background-size 8 --quiet
        test -s "$out/shap.csv" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
esac
echo "smoke $step: ok"
