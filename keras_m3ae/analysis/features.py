"""Feature clusters (M3AE Section 4.4): CLS features and their t-SNE map."""

import numpy as np
from keras import ops


def cls_features(backbone, images, batch_size=64):
    """Image-only CLS features of the encoder, as numpy `(N, hidden_dim)`.

    A pretrained M3AE encodes images without any text; its text weights
    are simply unused.

    Args:
        backbone: an `M3AEBackbone`.
        images: normalised images `(N, H, W, C)` (numpy).
        batch_size: int. Images per forward pass.
    """
    features = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        encoded = backbone.encode(backbone.embed_images(chunk))
        features.append(ops.convert_to_numpy(encoded[:, 0]))
    return np.concatenate(features)


def plot_tsne(features, labels=None, class_names=None, path=None, seed=0):
    """2-D t-SNE of features, coloured by label (scikit-learn's TSNE).

    Args:
        features: `(N, D)` array.
        labels: optional int `(N,)`.
        class_names: optional list of names for the legend.
        path: optional file to save the figure to.
        seed: int. t-SNE random state.

    Returns:
        `(embedding (N, 2), Figure)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    features = np.asarray(features, "float64")
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    embedding = TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(features)
    fig, ax = plt.subplots(figsize=(5, 5))
    if labels is None:
        ax.scatter(embedding[:, 0], embedding[:, 1], s=6)
    else:
        for label in np.unique(labels):
            points = embedding[np.asarray(labels) == label]
            name = class_names[label] if class_names is not None else str(label)
            ax.scatter(points[:, 0], points[:, 1], s=6, label=name)
        ax.legend(fontsize=7, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of CLS features", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return embedding, fig
