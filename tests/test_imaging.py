import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellpix.core.layout import DEFAULT_PSEUDO_COUNT, GeneLayout
from cellpix.core.render import ImageRenderer


def test_lsa_gives_every_gene_its_own_pixel(zheng_layout, zheng_ref):
    report = zheng_layout.collision_report()
    n_genes = zheng_ref.n_vars
    assert n_genes == 3000 and report["n_genes"] == n_genes and report["genes_sharing_a_pixel"] == 0
    assert zheng_layout.size == 55  # smallest square holding them
    assert len(np.unique(zheng_layout.pixel_index)) == n_genes


def test_render_inverse_returns_scaled_vector(zheng_ref, zheng_layout):
    renderer = ImageRenderer(zheng_layout)
    block = zheng_ref.X[:200]
    images = renderer.render_csr(block)
    assert images.shape == (200, 1, zheng_layout.size, zheng_layout.size)
    scaled = renderer.scale(torch.as_tensor(block.toarray()))
    # The CSR path takes the shifted logarithm in NumPy, the dense path in torch: the two libraries' expm1/log1p
    # may differ in the last bit of a float32.
    assert torch.allclose(renderer.inverse(images), scaled, rtol=0, atol=1e-6)
    dense_images = renderer(torch.as_tensor(block.toarray()))
    assert torch.allclose(dense_images, images, rtol=0, atol=1e-6)  # CSR and dense paths agree
    three = ImageRenderer(zheng_layout, channels=3).render_csr(block)
    assert three.shape[1] == 3 and torch.equal(three[:, 1], images[:, 0])
    assert torch.allclose(ImageRenderer(zheng_layout, channels=3).inverse(three, "sum"), 3 * scaled)


def test_pixels_are_the_shifted_log_min_max_scaled(zheng_ref, zheng_layout):
    """A pixel is log(1 + CP10k / k) scaled by the reference's per-gene range; k = 1 is log1p(CP10k) as it is."""
    from dataclasses import replace

    block = zheng_ref.X[:100]
    values = block.toarray()
    for k in (1.0, zheng_layout.pseudo_count):
        layout = replace(zheng_layout, pseudo_count=k)
        compressed = np.log1p(np.expm1(values.astype(np.float64)) / k)
        low = np.log1p(np.expm1(layout.gene_min.astype(np.float64)) / k)
        high = np.log1p(np.expm1(layout.gene_max.astype(np.float64)) / k)
        expected = np.clip((compressed - low) / np.where(high > low, high - low, 1.0), 0, 1)
        got = ImageRenderer(layout).inverse(ImageRenderer(layout).render_csr(block)).numpy()
        assert np.allclose(got, expected, atol=1e-5)
    assert zheng_layout.pseudo_count == DEFAULT_PSEUDO_COUNT  # what fit_layout uses unless told
    assert GeneLayout.from_dict({**zheng_layout.to_dict(), "scaling": {
        k: v for k, v in zheng_layout.to_dict()["scaling"].items() if k != "pseudo_count"}}).pseudo_count == 1.0


def test_layout_file_round_trip_renders_identically(tmp_path, zheng_ref, zheng_layout):
    path = tmp_path / "layout.json"
    zheng_layout.save(path)
    again = GeneLayout.load(path)
    block = zheng_ref.X[:64]
    assert torch.equal(ImageRenderer(again).render_csr(block), ImageRenderer(zheng_layout).render_csr(block))
    assert again.symbols == zheng_layout.symbols
    # where the manifold's cells came from travels with the file (conftest fits it stratified by cell type)
    assert again.fit_info["stratified_by"] == "cell_type" and again.fit_info["n_cells_fit"] == 600


def test_correlated_markers_sit_closer_than_random_pairs(zheng_layout):
    names = zheng_layout.display_names
    where = {n: (zheng_layout.rows[i], zheng_layout.cols[i]) for i, n in enumerate(names)}
    pairs = [p for p in [("CD79A", "CD79B"), ("CD3D", "CD3E"), ("NKG7", "GNLY"), ("S100A8", "S100A9")]
             if p[0] in where and p[1] in where]
    assert len(pairs) >= 3
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(names), size=(5000, 2))
    coords = np.stack([zheng_layout.rows, zheng_layout.cols], axis=1)
    random_dist = np.median(np.linalg.norm(coords[idx[:, 0]] - coords[idx[:, 1]], axis=1))
    marker_dist = np.median([np.hypot(where[a][0] - where[b][0], where[a][1] - where[b][1]) for a, b in pairs])
    assert marker_dist < random_dist / 3


def test_masking_drops_the_requested_share(zheng_ref, zheng_layout):
    renderer = ImageRenderer(zheng_layout)
    block = sp.csr_matrix(zheng_ref.X[:300])
    gen = torch.Generator().manual_seed(0)
    full = renderer.render_csr(block)
    masked = renderer.render_csr(block, mask_fraction=0.3, generator=gen)
    kept = (masked > 0).sum() / (full > 0).sum()
    assert 0.65 < float(kept) < 0.75


def test_streaming_row_ranges_into_a_reused_buffer_match_whole_renders(zheng_ref, zheng_layout):
    """rows=/out= (the annotate loop's path) must not leave pixels of an earlier batch behind."""
    renderer = ImageRenderer(zheng_layout)
    matrix = sp.csr_matrix(zheng_ref.X[:300])
    expected = renderer.render_csr(matrix)
    buffer = renderer.new_buffer(128)
    for start in range(0, 300, 128):
        stop = min(start + 128, 300)
        batch = renderer.render_csr(matrix, rows=(start, stop), out=buffer)
        assert torch.equal(batch, expected[start:stop])
    # A smaller batch after a full one reuses the front of the buffer.
    assert torch.equal(renderer.render_csr(matrix, rows=(5, 9), out=buffer), expected[5:9])
    # A range past the matrix would silently render fewer rows than asked for.
    with pytest.raises(ValueError, match="not a range within"):
        renderer.render_csr(matrix, rows=(250, 310), out=buffer)


def test_shared_pixels_are_averaged_on_a_binned_grid(zheng_ref, zheng_layout):
    """Non-lsa layouts put several genes on one pixel; CSR and dense paths both average them."""
    binned = GeneLayout.from_dict({**zheng_layout.to_dict(), "size": 20,
                                   "rows": (zheng_layout.rows * 20 // zheng_layout.size).tolist(),
                                   "cols": (zheng_layout.cols * 20 // zheng_layout.size).tolist()})
    renderer = ImageRenderer(binned)
    assert not renderer.unique_pixels
    block = zheng_ref.X[:50]
    assert torch.allclose(renderer.render_csr(block), renderer(torch.as_tensor(block.toarray())), atol=1e-6)


# a nearly full grid (band start) and a sparse one (nearest-free start), on two different views of the genes
@pytest.mark.parametrize(("size", "components"), [(41, (0, 1)), (60, (1, 2))])
def test_tiled_assignment_costs_within_two_percent_of_the_dense_optimum(zheng_ref, size, components):
    """Real gene positions (PCA of 1,600 Zheng genes): distinct pixels, cost near scipy's dense optimum."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist
    from sklearn.decomposition import PCA

    from cellpix.steps.imaging.assignment import EXACT_MAX_GENES, assign_pixels, assignment_cost, pixel_centres

    genes = zheng_ref.X[:, :1600].toarray().T
    assert len(genes) > EXACT_MAX_GENES  # the tiled path, not the dense one
    position = PCA(n_components=3, random_state=0).fit_transform(genes)[:, list(components)]
    scaled = (position - position.min(0)) / (position.max(0) - position.min(0)) * size
    pixels = assign_pixels(scaled, size)
    assert len(np.unique(pixels)) == len(genes) and pixels.max() < size * size
    _, optimum = linear_sum_assignment(cdist(scaled, pixel_centres(size), "sqeuclidean"))
    assert assignment_cost(scaled, pixels, size) <= 1.02 * assignment_cost(scaled, optimum, size)


def test_the_cpu_preset_layout_is_the_panel_order_made_without_a_manifold(zheng_ref):
    """`cx.fit_layout` by default (the cpu preset) puts genes row by row in panel order, samples no cells and
    takes no time; an explicit method still wins over the preset."""
    import cellpix as cx

    layout = cx.fit_layout(zheng_ref)
    assert layout.method == "ordered" and layout.fit_info["n_cells_fit"] == 0
    assert "stratified_by" not in cx.fit_layout(zheng_ref, groupby="cell_type").fit_info  # no cells, no strata
    assert layout.fit_info["fit_seconds"] < 1.0
    assert layout.genes == list(zheng_ref.var_names)
    np.testing.assert_array_equal(layout.pixel_index, np.arange(zheng_ref.n_vars))
    assert cx.fit_layout(zheng_ref, preset="trunk", method="pca", max_cells=200).method == "pca"
    with pytest.raises(Exception, match="own pixel; --discretization bin"):
        cx.fit_layout(zheng_ref, discretization="bin")


@pytest.mark.parametrize("seed", [0, 1])
def test_the_read_out_learns_the_same_from_any_gene_placement(zheng_ref, zheng_layout, seed):
    """The reason the cpu preset skips the manifold: the per-pixel read-out gives every pixel its own weights, so
    the panel-order layout and the t-SNE layout train models that score alike and call the same cells."""
    import cellpix as cx
    from cellpix.steps.annotate.annotate import AnnotateOptions
    from cellpix.steps.train.trainer import TrainConfig

    config = TrainConfig(epochs=12, seed=seed, val_fraction=0.2)
    scores, calls = [], []
    for layout in (zheng_layout, cx.fit_layout(zheng_ref)):
        model = cx.train(zheng_ref, layout, "pbmc-sorted", "cell_type", config, progress=False)
        scores.append(model.metadata["training"]["validation_metrics"]["val_subtype_accuracy"])
        annotated = cx.annotate(zheng_ref[::7].copy(), model, AnnotateOptions(progress=False))
        calls.append(annotated.obs["cellpix_subtype"].astype(str).to_numpy())
    assert scores[0] > 0.75 and abs(scores[0] - scores[1]) <= 0.03, scores
    assert (calls[0] == calls[1]).mean() >= 0.9


def test_a_trunk_is_refused_a_layout_without_geometry(zheng_ref):
    import cellpix as cx
    from cellpix.errors import CellpixError
    from cellpix.steps.train.trainer import TrainConfig

    with pytest.raises(CellpixError, match=r"puts genes in panel order.*--preset trunk"):
        cx.train(zheng_ref, cx.fit_layout(zheng_ref), "pbmc-sorted", "cell_type",
                 TrainConfig.from_preset("trunk", epochs=1), progress=False)


def test_the_layout_picture_names_every_marker_once(tmp_path):
    """Markers that sit close together share one box (none hidden under another, no dot left unnamed)."""
    import matplotlib.pyplot as plt

    from cellpix.core.layout import GeneLayout
    from cellpix.steps.imaging.preview import _label_markers, plot_layout

    genes = ["CD3D", "CD3E", "LYZ", "MS4A1", "X1", "X2", "X3", "X4", "X5"]
    rows, cols = [10, 10, 40, 60, 0, 1, 2, 3, 4], [5, 6, 40, 10, 0, 0, 0, 0, 0]
    layout = GeneLayout(genes=genes, rows=rows, cols=cols, size=71, gene_min=np.zeros(9), gene_max=np.ones(9),
                        method="ordered")
    fig, ax = plt.subplots()
    _label_markers(ax, layout)
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert sorted(texts) == ["CD3D, CD3E", "LYZ", "MS4A1"]
    path = plot_layout(layout, np.linspace(0, 1, 9), tmp_path / "layout.png")
    assert path.exists() and path.stat().st_size > 0
