process CELLPIX_SPLIT {
    tag "$meta.id"
    label 'process_single'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-annotate:0.1.0"

    input:
    tuple val(meta), path(query)
    val cells_per_shard

    output:
    tuple val(meta), path("${prefix}.*.h5ad"), emit: shards
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def shard_size = cells_per_shard ? "--cells-per-shard ${cells_per_shard}" : ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellpix split "$query" --outdir . --prefix "$prefix" $shard_size --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    touch "${prefix}.00000.h5ad"
    """
}
