import numpy as np
import pytest
import threadpoolctl
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
    # One OpenMP thread: on a busy 2-core machine, scikit-learn's threads
    # wait for each other at each of t-SNE's 1000 iterations (40 s instead
    # of 0.2 s for these 40 points).
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        embedding, _ = analysis.plot_tsne(features, labels, ["a", "b"], tmp_path / "tsne.png")
    # Two well separated clusters stay separated in the map.
    centre = [embedding[labels == k].mean(0) for k in (0, 1)]
    spread = max(embedding[labels == k].std(0).max() for k in (0, 1))
    assert np.linalg.norm(centre[0] - centre[1]) > 3 * spread
    for name in ("rec.png", "att.png", "tsne.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
