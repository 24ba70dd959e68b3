"""Looking inside: reconstructions, cross-modal attention, feature clusters, OOD."""

from keras_m3ae.analysis.attention import attention_share
from keras_m3ae.analysis.attention import cross_modal_attention
from keras_m3ae.analysis.attention import patch_region
from keras_m3ae.analysis.attention import plot_text_to_image_attention
from keras_m3ae.analysis.features import cls_features
from keras_m3ae.analysis.features import linear_probe_accuracy
from keras_m3ae.analysis.features import neighbour_agreement
from keras_m3ae.analysis.features import plot_tsne
from keras_m3ae.analysis.ood import MahalanobisDetector
from keras_m3ae.analysis.ood import auroc
from keras_m3ae.analysis.ood import extract_features
from keras_m3ae.analysis.ood import max_softmax_score
from keras_m3ae.analysis.snapshots import ReconstructionSnapshots
from keras_m3ae.analysis.snapshots import reconstruction_grid
from keras_m3ae.analysis.visualization import plot_reconstructions
from keras_m3ae.analysis.visualization import reconstruct
from keras_m3ae.analysis.visualization import to_pixels
