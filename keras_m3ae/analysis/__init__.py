"""Looking inside: reconstructions, attention, features, OOD scores."""

from keras_m3ae.analysis.visualization import plot_reconstructions
from keras_m3ae.analysis.visualization import to_pixels
