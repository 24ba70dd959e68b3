"""Fine-tuning and linear probing: augmentation and classification datasets.

`augment` holds the MAE / M3AE fine-tuning recipe's transforms (crops, MixUp /
CutMix, the batch map `FineTuneAugmentation`), `rand_augment` timm's
RandAugment in TensorFlow ops, and `datasets` the classification inputs (a
TFDS split, or the bundled shapes data). All run inside `tf.data`, on every
backend. The classifier itself is `keras_m3ae.M3AEImageClassifier`; its
optimizers are in `keras_m3ae.optimizers`.
"""

from keras_m3ae.finetune.augment import EVAL_CROP_FRACTION
from keras_m3ae.finetune.augment import FINETUNE_CROP_SCALE
from keras_m3ae.finetune.augment import FineTuneAugmentation
from keras_m3ae.finetune.augment import center_crop
from keras_m3ae.finetune.augment import mix_batch
from keras_m3ae.finetune.augment import random_resized_crop
from keras_m3ae.finetune.datasets import array_dataset
from keras_m3ae.finetune.datasets import dataset_to_numpy
from keras_m3ae.finetune.datasets import default_classification_data
from keras_m3ae.finetune.datasets import tfds_classification_dataset
from keras_m3ae.finetune.rand_augment import batch_rand_augment
