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


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels):
    """Top-1 accuracy of the papers' linear probe, fitted in closed form.

    Frozen features, standardised (what the probe's BatchNorm without
    affine does), then a multinomial logistic regression (scikit-learn),
    scored on held-out features. A quick, deterministic stand-in for
    training `M3AEImageClassifier(fine_tune_blocks=0)` with LARS.

    Args:
        train_features: `(N, D)` array, e.g. from `cls_features`.
        train_labels: int `(N,)`.
        test_features: `(M, D)` array.
        test_labels: int `(M,)`.

    Returns:
        float, the share of `test_labels` predicted.

    Example:
    >>> accuracy = linear_probe_accuracy(cls_features(backbone, x_train), y_train,
    ...                                  cls_features(backbone, x_test), y_test)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_features)
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(scaler.transform(train_features), np.asarray(train_labels))
    predicted = classifier.predict(scaler.transform(test_features))
    return float(np.mean(predicted == np.asarray(test_labels)))


def neighbour_agreement(features, labels, k=10):
    """Mean share of each point's `k` nearest neighbours that share its label.

    What a t-SNE map shows, as a number: features that cluster by a label
    score near 1 for it; features that ignore it score near the share of
    that label's most common values (1 / classes when balanced).

    Args:
        features: `(N, D)` array.
        labels: `(N,)` array of any hashable values.
        k: int. Neighbours per point (Euclidean, the point itself excluded).

    Returns:
        float in [0, 1].

    Example:
    >>> neighbour_agreement(features, shape_labels), neighbour_agreement(features, colour_labels)
    """
    from sklearn.neighbors import NearestNeighbors

    features = np.asarray(features, "float64")
    labels = np.asarray(labels)
    if len(features) != len(labels) or len(features) <= k:
        raise ValueError(f"Need more than k={k} points and one label per point; got {len(features)} "
                         f"points and {len(labels)} labels.")
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    return float(np.mean(labels[index[:, 1:]] == labels[:, None]))


def plot_tsne(features, labels=None, class_names=None, path=None, seed=0, title="t-SNE of CLS features",
              embedding=None, ax=None, palette=None):
    """2-D t-SNE of features, coloured by label (scikit-learn's TSNE).

    Args:
        features: `(N, D)` array.
        labels: optional int `(N,)`.
        class_names: optional list of names for the legend.
        path: optional file to save the figure to.
        seed: int. t-SNE random state.
        title: str. The figure's title.
        embedding: optional `(N, 2)` map from an earlier call, to colour the
            same map by other labels without computing it again.
        ax: optional matplotlib `Axes` to draw into (e.g. one panel of a
            larger figure); by default a new figure.
        palette: optional list of matplotlib colours, one per label value
            (e.g. the colours the labels name); by default matplotlib's cycle.

    Returns:
        `(embedding (N, 2), Figure)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    if embedding is None:
        import threadpoolctl

        features = np.asarray(features, "float64")
        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        # One OpenMP thread: when the cores are busy, scikit-learn's threads
        # wait for each other at each of the 1000 iterations (a 40-point map
        # took 40 s instead of 0.2 s on a loaded 2-core machine); a few
        # thousand points take seconds on one.
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            embedding = TSNE(2, perplexity=perplexity, random_state=seed,
                             init="pca").fit_transform(features)
    elif len(embedding) != len(features):
        raise ValueError(f"`embedding` has {len(embedding)} points but `features` {len(features)}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    if labels is None:
        ax.scatter(embedding[:, 0], embedding[:, 1], s=6)
    else:
        for label in np.unique(labels):
            points = embedding[np.asarray(labels) == label]
            name = class_names[label] if class_names is not None else str(label)
            style = {} if palette is None else {"color": palette[label], "edgecolors": "0.4",
                                                "linewidths": 0.3}
            ax.scatter(points[:, 0], points[:, 1], s=6, label=name, **style)
        ax.legend(fontsize=7, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return embedding, fig
