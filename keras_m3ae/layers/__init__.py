"""Building blocks: patching, positions, masking, transformer blocks."""

from keras_m3ae.layers.dense import TokenDense
from keras_m3ae.layers.embedding import ClassToken
from keras_m3ae.layers.embedding import PatchEmbedding
from keras_m3ae.layers.embedding import PositionTypeEmbedding
from keras_m3ae.layers.layer_norm import CenteredLayerNorm
from keras_m3ae.layers.masking import gather_tokens
from keras_m3ae.layers.masking import num_kept
from keras_m3ae.layers.masking import random_masking
from keras_m3ae.layers.masking import random_text_masking
from keras_m3ae.layers.patching import patchify
from keras_m3ae.layers.patching import unpatchify
from keras_m3ae.layers.sincos import sincos_1d
from keras_m3ae.layers.sincos import sincos_2d
from keras_m3ae.layers.transformer import DropPath
from keras_m3ae.layers.transformer import MultiHeadSelfAttention
from keras_m3ae.layers.transformer import TransformerBlock
from keras_m3ae.layers.transformer import TransformerStack
from keras_m3ae.layers.transformer import fast_path_for
from keras_m3ae.layers.transformer import set_torch_fast_path
