#!/usr/bin/env nextflow
/*
 * cellpix: hierarchical cell-type annotation through gene images.
 *
 *   reference: integrate (panel among the queries' genes) -> image -> train     (skipped with --model)
 *   each query (a samplesheet row, or --query):
 *              integrate (onto the reference panel, --integration_method) -> split ->
 *              annotate (every shard of every query in parallel, per cell) -> merge ->
 *              consensus (clusters of the whole query: consensus labels, unknown clusters) -> explain
 *   the run:   one summary table of every sample (pipeline_info/cellpix_summary_mqc.tsv, MultiQC custom content)
 *
 * Every process only calls the cellpix CLI; see modules/local/cellpix/.
 */
nextflow.enable.dsl = 2

include { validateParameters; paramsSummaryLog; samplesheetToList } from 'plugin/nf-schema'

include { CELLPIX_INTEGRATE } from './modules/local/cellpix/integrate/main'
include { CELLPIX_INTEGRATE as CELLPIX_INTEGRATE_QUERY } from './modules/local/cellpix/integrate/main'
include { CELLPIX_IMAGE     } from './modules/local/cellpix/image/main'
include { CELLPIX_TRAIN     } from './modules/local/cellpix/train/main'
include { CELLPIX_SPLIT     } from './modules/local/cellpix/split/main'
include { CELLPIX_ANNOTATE  } from './modules/local/cellpix/annotate/main'
include { CELLPIX_MERGE     } from './modules/local/cellpix/merge/main'
include { CELLPIX_CONSENSUS } from './modules/local/cellpix/consensus/main'
include { CELLPIX_EXPLAIN   } from './modules/local/cellpix/explain/main'
include { CELLPIX_MODELS    } from './modules/local/cellpix/models/main'

/*
 * A samplesheet row's h5ad: as nf-core reads it (relative to the launch directory), else relative to the
 * samplesheet's own folder, so a samplesheet kept beside its data (the test profile's, in assets/) works from
 * any launch directory.
 */
def samplePath(h5ad, sheet, sample) {
    if (h5ad.exists()) {
        return h5ad
    }
    def written = workflow.launchDir.relativize(h5ad).toString()
    def beside = file(sheet).parent.resolve(written).normalize()
    if (beside.exists()) {
        return beside
    }
    error "Samplesheet row '${sample}': ${written} does not exist (relative paths are read from the launch directory, then from the samplesheet's folder)"
}

def summaryHeader() {
    return [
        "# id: 'cellpix_summary'",
        "# section_name: 'cellpix annotation'",
        "# description: 'One row per sample: cells, the share flagged as unlike the reference, clusters whose type the reference lacks, gene coverage and warnings.'",
        "# plot_type: 'table'",
        "Sample\tcells\tflagged_novel_share\tflagged_by_cluster_share\tclusters\tunknown_clusters\tgene_coverage\twarnings\tmodel_sha256",
    ].join('\n')
}

def summaryRow(sample, json) {
    def s = new groovy.json.JsonSlurper().parse(json)
    return [sample, s.cells, s.flagged_novel_share, s.flagged_by_cluster_share, s.clusters, s.unknown_clusters,
     s.gene_coverage, (s.warnings ?: []).size(), s.model_checksum_sha256].join('\t')
}

// A --model value naming a file (a folder part or the bundle suffix), as cellpix's own resolver reads it.
def isBundlePath(String value) {
    return value.contains('/') || value.endsWith('.cellpix')
}

workflow {
    validateParameters()
    log.info paramsSummaryLog(workflow)
    if (!params.input == !params.query) {
        error "Give --input SAMPLESHEET.csv (sample,h5ad[,batch_key]) or --query QUERY.h5ad, one of the two"
    }
    if (!params.model && !params.reference) {
        error "Give --reference REF.h5ad to train a model, or --model BUNDLE.cellpix or a model name (cellpix models list)"
    }

    // Queries: [meta (id, batch_key), h5ad] per samplesheet row, checked against assets/schema_input.json.
    ch_samples = params.input
        ? channel.fromList(samplesheetToList(params.input, "${projectDir}/assets/schema_input.json"))
            .map { meta, h5ad -> [meta, samplePath(h5ad, params.input, meta.id)] }
        : channel.of([[id: params.query_id], file(params.query, checkIfExists: true)])

    // Reference: integrate -> image -> train, unless a bundle is given. The panel is chosen among the genes
    // every query has (--genes-from), so no query misses part of it.
    // --model is a bundle's path or a ready-made model's name (`cellpix models list`), which cellpix itself
    // resolves and verifies: a name is never read as a path, so a typo fails with the list of known models.
    if (params.model && isBundlePath(params.model)) {
        ch_bundle = channel.value(file(params.model, checkIfExists: true))
    } else if (params.model) {
        CELLPIX_MODELS(channel.value(params.model))
        ch_bundle = CELLPIX_MODELS.out.bundle.first()
    } else {
        ch_genes_from = params.panel_from_queries
            ? ch_samples.map { _meta, h5ad -> h5ad }.collect().map { files -> [files] }
            : channel.value([[]])
        ch_reference = channel.of([[id: params.reference_id], file(params.reference, checkIfExists: true), []])
            .combine(ch_genes_from)
        CELLPIX_INTEGRATE(ch_reference)
        CELLPIX_IMAGE(CELLPIX_INTEGRATE.out.h5ad)
        ch_train_in = CELLPIX_INTEGRATE.out.h5ad.join(CELLPIX_IMAGE.out.layout)
        CELLPIX_TRAIN(ch_train_in, params.label_key)
        ch_bundle = CELLPIX_TRAIN.out.bundle.map { _meta, bundle -> bundle }.first()
    }

    // Each query onto the reference panel (batch-corrected toward the integrated reference when one was built
    // here, else toward the bundle's panel), then shard, annotate in parallel, merge each query in shard order.
    ch_query = ch_samples
    if (params.integrate_query) {
        ch_target = params.model ? ch_bundle : CELLPIX_INTEGRATE.out.h5ad.map { _meta, h5ad -> h5ad }.first()
        CELLPIX_INTEGRATE_QUERY(ch_samples.combine(ch_target).map { meta, h5ad, target -> [meta, h5ad, target, []] })
        ch_query = CELLPIX_INTEGRATE_QUERY.out.h5ad
    }
    CELLPIX_SPLIT(ch_query, params.cells_per_shard)
    ch_shards = CELLPIX_SPLIT.out.shards
        .transpose()
        .map { meta, shard -> [meta + [id: shard.baseName, query_id: meta.id], shard] }
    CELLPIX_ANNOTATE(ch_shards.combine(ch_bundle))
    ch_annotated = CELLPIX_ANNOTATE.out.h5ad
        .map { meta, h5ad -> [[id: meta.query_id], h5ad] }
        .groupTuple()
    CELLPIX_MERGE(ch_annotated)
    // Clusters belong to the whole query, never to a shard: found once, on the merged file.
    CELLPIX_CONSENSUS(CELLPIX_MERGE.out.h5ad.combine(ch_bundle))

    if (!params.skip_explain) {
        CELLPIX_EXPLAIN(CELLPIX_CONSENSUS.out.h5ad.combine(ch_bundle))
    }

    // The run-level table: one row per sample, in MultiQC's custom-content format (a plain TSV to anyone else).
    CELLPIX_CONSENSUS.out.summary
        .map { meta, json -> summaryRow(meta.id, json) }
        .collectFile(name: 'cellpix_summary_mqc.tsv', storeDir: "${params.outdir}/pipeline_info", sort: true,
                     seed: summaryHeader(), newLine: true)

    // One report of every tool version the processes emitted to the `versions` topic.
    channel.topic('versions')
        .unique()
        .map { process, tool, version -> "${process.tokenize(':').last()}:\n    ${tool}: ${version}" }
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", newLine: true,
                     sort: true)
}
