import numpy as np
import pytest
from keras import ops

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae import analysis


def test_cross_modal_attention_rows_and_padding():
    backbone = tiny_backbone()
    batch = tiny_batch()
    maps = analysis.cross_modal_attention(backbone, batch)
    assert maps["text_to_image"].shape == (4, 8, 4, 4)
    # Rows over all keys sum to 1, so each cross-modal slice is a part of it.
    assert np.all(maps["text_to_image"].sum(axis=(2, 3)) < 1.0 + 1e-5)
    assert np.all(maps["text_to_image"] >= 0)
    # Padding tokens receive no attention from patches.
    pad = ~batch["padding_mask"]
    assert np.all(maps["image_to_text"][np.repeat(pad[:, None, :], 16, 1)] < 1e-6)
    # Same scores as the encoder's last block, averaged over heads.
    _, scores = backbone.encode(backbone.embed_images(batch["images"]), backbone.embed_text(batch["token_ids"]),
                                text_valid=batch["padding_mask"], return_attention_scores=True)
    last = ops.convert_to_numpy(scores[-1]).mean(1)
    np.testing.assert_allclose(maps["cls_to_image"].reshape(4, 16), last[:, 0, 1:17], atol=1e-6)


def test_cross_modal_attention_needs_text():
    with pytest.raises(ValueError, match="needs a backbone with text"):
        analysis.cross_modal_attention(tiny_backbone(vocabulary_size=None), tiny_batch())


def test_cls_features_match_backbone_without_text():
    backbone = tiny_backbone(vocabulary_size=None)
    images = tiny_batch()["images"]
    features = analysis.cls_features(backbone, images, batch_size=3)
    np.testing.assert_allclose(features, ops.convert_to_numpy(backbone({"images": images}))[:, 0], atol=1e-5)


def test_plots_write_pngs(tmp_path):
    pretrainer = tiny_pretrainer()
    batch = tiny_batch()
    analysis.plot_reconstructions(analysis.reconstruct(pretrainer, batch), tmp_path / "rec.png", captions=["a b"] * 4)
    maps = analysis.cross_modal_attention(pretrainer.backbone, batch)
    analysis.plot_text_to_image_attention(batch["images"], maps, ["w1", "w2"], tmp_path / "att.png")
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(8, 1, (20, 5))])
    labels = np.repeat([0, 1], 20)
    embedding, _ = analysis.plot_tsne(features, labels, ["a", "b"], tmp_path / "tsne.png")
    # Two well separated clusters stay separated in the map.
    centre = [embedding[labels == k].mean(0) for k in (0, 1)]
    spread = max(embedding[labels == k].std(0).max() for k in (0, 1))
    assert np.linalg.norm(centre[0] - centre[1]) > 3 * spread
    for name in ("rec.png", "att.png", "tsne.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.backend_independent  # numpy and scikit-learn only
def test_attention_share_counts_the_region_against_the_rest():
    # Two examples, 1 token, 2x2 patches; the region is the top-left patch.
    maps = np.array([[[[0.3, 0.1], [0.1, 0.1]]], [[[0.0, 0.2], [0.2, 0.2]]]])
    region = np.zeros((2, 2, 2), bool)
    region[:, 0, 0] = True
    share = analysis.attention_share({"text_to_image": maps}, region)
    np.testing.assert_allclose(share, [[0.5], [0.0]])
    with pytest.raises(ValueError, match=r"\(batch, grid_h, grid_w\) = \(2, 2, 2\)"):
        analysis.attention_share(maps, region[:, 0])
    # A pixel mask pools to the patches it covers at least half of.
    mask = np.zeros((1, 8, 8), bool)
    mask[0, :4, :4] = True       # all of patch (0, 0)
    mask[0, :2, 4:] = True       # half of patch (0, 1)
    mask[0, 4, 4] = True         # one pixel of patch (1, 1)
    np.testing.assert_array_equal(analysis.patch_region(mask, (2, 2))[0], [[True, True], [False, False]])
    with pytest.raises(ValueError, match="does not split into a 3x3"):
        analysis.patch_region(mask, (3, 3))


@pytest.mark.backend_independent
def test_object_mask_finds_the_drawn_shape():
    from keras_m3ae.data import shapes

    rng = np.random.default_rng(0)
    for layout in ("centered", "grid"):
        pixels, caption, _ = shapes.render_shape_example(rng, 32, layout=layout)
        mask = shapes.object_mask(pixels, caption)
        colour = caption.split()[1] if layout == "centered" else caption.split()[2]
        # Inside the mask the pixels are the shape's colour, outside the background's.
        target = np.asarray(shapes.COLORS[colour])
        assert np.abs(pixels[mask].astype(int) - target).max() <= 6
        assert 0.02 < mask.mean() < 0.6
    batch = shapes.object_mask(np.stack([pixels, pixels]), [caption, caption])
    assert batch.shape == (2, 32, 32) and np.array_equal(batch[1], mask)
    with pytest.raises(ValueError, match="Not a shapes caption"):
        shapes.object_mask(pixels, "a photo of a cat")


@pytest.mark.backend_independent
def test_probe_and_neighbours_read_what_the_features_hold():
    rng = np.random.default_rng(0)
    shape = np.repeat(np.arange(4), 50)
    colour = np.tile(np.arange(5), 40)
    # Colour moves the features far, shape a little: neighbours agree on
    # colour; a linear probe still reads the shape.
    features = np.concatenate([np.eye(5)[colour] * 20, np.eye(4)[shape] * 2], 1)
    features = features + rng.normal(0, 0.5, features.shape)
    assert analysis.neighbour_agreement(features, colour, k=5) == 1.0
    assert analysis.neighbour_agreement(features, shape, k=5) > 0.9
    assert analysis.neighbour_agreement(features[:, :5], shape, k=5) < 0.4
    train, test = np.arange(200) % 2 == 0, np.arange(200) % 2 == 1
    assert analysis.linear_probe_accuracy(features[train], shape[train], features[test], shape[test]) > 0.95
    colour_only = features[:, :5]
    chance = analysis.linear_probe_accuracy(colour_only[train], shape[train], colour_only[test], shape[test])
    assert chance < 0.5
    with pytest.raises(ValueError, match="more than k=10 points"):
        analysis.neighbour_agreement(features[:5], shape[:5])


@pytest.mark.backend_independent  # numpy and matplotlib only
def test_attention_plot_draws_one_row_per_map(tmp_path):
    images = np.zeros((1, 8, 8, 3), "float32")
    rows = [{"text_to_image": np.full((1, 2, 2, 2), v)} for v in (0.1, 0.2, 0.3)]
    fig = analysis.plot_text_to_image_attention(images, rows, ["red", "star"], tmp_path / "att.png",
                                                row_labels=["block 1", "block 2", "block 3"])
    assert len(fig.axes) == 3 * 3
    assert [fig.axes[3 * r].get_title() for r in range(3)] == ["block 1", "block 2", "block 3"]
    assert fig.axes[1].get_title() == "red" and fig.axes[8].get_title() == "star"
    assert (tmp_path / "att.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="3 rows of maps but 2"):
        analysis.plot_text_to_image_attention(images, rows, ["red"], row_labels=["a", "b"])
