process CELLPIX_MODELS {
    tag "$name"
    label 'process_single'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-annotate:0.1.0"

    input:
    val name

    output:
    path("${prefix}.cellpix"), emit: bundle
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${name}"
    """
    cellpix models fetch "$name" --output "${prefix}.cellpix" --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${name}"
    """
    echo $args
    touch "${prefix}.cellpix"
    """
}
