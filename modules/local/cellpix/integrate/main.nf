process CELLPIX_INTEGRATE {
    tag "$meta.id"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-integrate:0.1.0"

    input:
    tuple val(meta), path(data), path(reference), path(genes_from, stageAs: 'genes_from/?/*')

    output:
    tuple val(meta), path("${prefix}.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}_report"), emit: report
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def reference_arg = reference ? "--reference ${reference}" : ''
    // reference mode: choose the panel among the genes every query has; [] (none) keeps the reference's own panel
    def genes_from_args = [genes_from].flatten().collect { query -> "--genes-from ${query}" }.join(' ')
    """
    cellpix integrate "$data" --threads ${task.cpus} --output "${prefix}.h5ad" $reference_arg $genes_from_args --report "${prefix}_report" $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    touch "${prefix}.h5ad"
    mkdir "${prefix}_report"
    touch "${prefix}_report/qc.json" "${prefix}_report/qc.png"
    """
}
