process CELLPIX_CONSENSUS {
    tag "$meta.id"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-annotate:0.1.0"

    input:
    tuple val(meta), path(annotated), path(bundle)

    output:
    tuple val(meta), path("${prefix}.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}.csv"), emit: table
    tuple val(meta), path("${prefix}.summary.json"), emit: summary
    tuple val(meta), path("${prefix}_plots"), emit: plots
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellpix consensus "$annotated" --threads ${task.cpus} --model "$bundle" --output "${prefix}.h5ad" --table "${prefix}.csv" --summary "${prefix}.summary.json" --plots "${prefix}_plots" --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    mkdir -p "${prefix}_plots"
    touch "${prefix}.h5ad" "${prefix}.csv" "${prefix}_plots/cellpix_confidence.png"
    echo '{"cells": 0, "flagged_novel_share": 0, "flagged_by_cluster_share": 0, "clusters": 0, "unknown_clusters": 0, "gene_coverage": 0, "warnings": [], "model_checksum_sha256": ""}' > "${prefix}.summary.json"
    """
}
