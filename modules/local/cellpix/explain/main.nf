process CELLPIX_EXPLAIN {
    tag "$meta.id"
    label 'process_medium'
    label 'process_gpu'

    conda "${moduleDir}/environment.yml"
    container "ghcr.io/cellpix/cellpix-explain:0.1.0"

    input:
    tuple val(meta), path(data), path(bundle)

    output:
    tuple val(meta), path("${prefix}_shap.csv"), emit: table
    tuple val(meta), path("${prefix}_plots"), emit: plots
    tuple val("${task.process}"), val('cellpix'), eval("cellpix --version | sed 's/.* version //'"), topic: versions, emit: versions_cellpix

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def device = task.accelerator ? 'cuda' : 'cpu'  // nf-core's accelerator convention: --profile gpu sets it
    """
    cellpix explain "$data" --threads ${task.cpus} --model "$bundle" --table "${prefix}_shap.csv" --plots "${prefix}_plots" --device ${device} --quiet $args
    """

    stub:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo $args
    mkdir -p "${prefix}_plots"
    touch "${prefix}_shap.csv" "${prefix}_plots/shap_heatmap_base.png"
    """
}
