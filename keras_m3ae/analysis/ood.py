"""Out-of-distribution detection on encoder features (M3AE Fig. 6).

Two scores, higher = more in-distribution:

- Mahalanobis (Lee et al. 2018): fit one mean per class and one shared
  covariance on in-distribution training features; the score of `x` is
  `-min_c (x - mu_c)^T Sigma^-1 (x - mu_c)`.
- Maximum softmax probability (Hendrycks & Gimpel 2017) of a classifier.

AUROC treats in-distribution examples as positives. M3AE reports
CIFAR-100 (in) vs CIFAR-10 (out) with a ViT-B: Mahalanobis 71.4 (M3AE) vs
69.0 (MAE), MSP 78.5 vs 77.2.
"""

import numpy as np
from sklearn.metrics import roc_auc_score


class MahalanobisDetector:
    """Class-conditional Gaussians with a shared covariance, on features.

    Args:
        regularization: float. Added to the covariance diagonal (relative to
            its mean variance) so the inverse exists with few examples.

    Example:
    >>> detector = MahalanobisDetector().fit(train_features, train_labels)
    >>> auroc(detector.score(in_features), detector.score(out_features))
    """

    def __init__(self, regularization=1e-6):
        self.regularization = regularization

    def fit(self, features, labels):
        """Fits class means and the shared (tied) covariance.

        Args:
            features: `(N, D)` array.
            labels: `(N,)` integer class ids.

        Returns:
            self.
        """
        features = np.asarray(features, np.float64)
        labels = np.asarray(labels).reshape(-1)
        self.classes_ = np.unique(labels)
        self.means_ = np.stack([features[labels == c].mean(0) for c in self.classes_])
        index = np.searchsorted(self.classes_, labels)
        centered = features - self.means_[index]
        covariance = centered.T @ centered / len(features)
        jitter = self.regularization * np.trace(covariance) / covariance.shape[0]
        covariance += jitter * np.eye(covariance.shape[0])
        self.covariance_ = covariance
        self.precision_ = np.linalg.pinv(covariance, hermitian=True)
        return self

    def distances(self, features):
        """Squared Mahalanobis distance to every class mean: `(N, num_classes)`."""
        features = np.asarray(features, np.float64)
        diff = features[:, None, :] - self.means_[None]
        return np.einsum("ncd,de,nce->nc", diff, self.precision_, diff)

    def score(self, features):
        """`-min_c distance`: higher means more in-distribution. `(N,)`."""
        return -self.distances(features).min(axis=1)


def max_softmax_score(logits):
    """Maximum softmax probability of each row of `logits`: `(N,)`."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities.max(axis=1)


def auroc(in_scores, out_scores):
    """Area under the ROC curve, in-distribution = positive class (scikit-learn)."""
    in_scores, out_scores = np.ravel(in_scores), np.ravel(out_scores)
    targets = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    return float(roc_auc_score(targets, np.concatenate([in_scores, out_scores])))


def extract_features(classifier, images, batch_size=64):
    """Pooled encoder features and logits of raw images through a classifier.

    Applies the classifier's preprocessor (if any), then its encoder and
    pooling (`image_features`) and its head.

    Args:
        classifier: `M3AEImageClassifier`.
        images: array `(N, H, W, C)` of raw images, or a dataset of
            `(images, labels)` / images batches.
        batch_size: int, for arrays.

    Returns:
        `(features (N, D), logits (N, num_classes))` numpy arrays.
    """
    import keras

    if hasattr(images, "as_numpy_iterator"):
        batches = (b[0] if isinstance(b, tuple) else b for b in images.as_numpy_iterator())
    else:
        images = np.asarray(images)
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    features, logits = [], []
    for batch in batches:
        if classifier.preprocessor is not None:
            batch = classifier.preprocessor(batch)
        batch = keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(batch))
        f = classifier.image_features(batch, training=False)
        x = f
        if classifier.head_norm is not None:
            x = classifier.head_norm(x, training=False)
        features.append(keras.ops.convert_to_numpy(f))
        logits.append(keras.ops.convert_to_numpy(classifier.output_dense(x)))
    return np.concatenate(features), np.concatenate(logits)
