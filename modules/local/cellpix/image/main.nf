process CELLPIX_IMAGE {
    tag "$meta.id"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-image:0.1.0"

    input:
    tuple val(meta), path(reference)

    output:
    tuple val(meta), path("${prefix}/layout.json"), emit: layout
    tuple val(meta), path("${prefix}/layout.png"), emit: preview
    tuple val(meta), path("${prefix}/layout_collisions.json"), emit: collisions
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    cellpix image "$reference" --threads ${task.cpus} --outdir "$prefix" $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    mkdir -p "$prefix"
    touch "$prefix/layout.json" "$prefix/layout.png" "$prefix/layout_collisions.json"
    """
}
