process CELLPIX_ANNOTATE {
    tag "$meta.id"
    label 'process_medium'
    label 'process_gpu'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-annotate:0.1.0"

    input:
    tuple val(meta), path(query), path(bundle)

    output:
    tuple val(meta), path("${prefix}.h5ad"), emit: h5ad
    tuple val(meta), path("${prefix}.csv"), emit: table
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def device = task.accelerator ? 'cuda' : 'cpu'  // nf-core's accelerator convention: --profile gpu sets it
    """
    cellpix annotate "$query" --threads ${task.cpus} --model "$bundle" --output "${prefix}.h5ad" --table "${prefix}.csv" --device ${device} --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    touch "${prefix}.h5ad" "${prefix}.csv"
    """
}
