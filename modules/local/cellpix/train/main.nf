process CELLPIX_TRAIN {
    tag "$meta.id"
    label 'process_high'
    label 'process_gpu'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-train:0.1.0"

    input:
    tuple val(meta), path(reference), path(layout)
    val label_key

    output:
    tuple val(meta), path("${prefix}.cellpix"), emit: bundle
    tuple val(meta), path("${prefix}_report"), emit: report
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def device = task.accelerator ? 'cuda' : 'cpu'  // nf-core's accelerator convention: --profile gpu sets it
    """
    cellpix train "$reference" --threads ${task.cpus} --layout "$layout" --labels "$label_key" --output "${prefix}.cellpix" --report-dir "${prefix}_report" --device ${device} --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    mkdir -p "${prefix}_report"
    touch "${prefix}.cellpix" "${prefix}_report/metrics.csv"
    """
}
