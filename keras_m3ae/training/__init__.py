"""Training aids: callbacks and safe writes for long runs, fine-tuning augmentation
(`augment`, with timm's RandAugment in `rand_augment`) and classification datasets
(`datasets`).

The optimizers, schedules and recipes live in `keras_m3ae.optimizers` and the
classification loss and metric in `keras_m3ae.losses`; their old names here
still work, with a `DeprecationWarning`.
"""

from keras_m3ae._deprecation import moved_names
from keras_m3ae.training.callbacks import NonFiniteLossError
from keras_m3ae.training.callbacks import NonFiniteLossGuard
from keras_m3ae.training.callbacks import SavePreset
from keras_m3ae.training.callbacks import SkipCountLogger
from keras_m3ae.training.checkpoints import atomic_directory
from keras_m3ae.training.checkpoints import recover_directory
from keras_m3ae.training.checkpoints import save_preset_atomically
from keras_m3ae.training.resume import PREEMPTED_EXIT_CODE
from keras_m3ae.training.resume import Preempted
from keras_m3ae.training.resume import TrainingCheckpoint
from keras_m3ae.training.resume import fit_resumable
from keras_m3ae.training.resume import request_preemption_save
from keras_m3ae.training.monitoring import RunSummary
from keras_m3ae.training.monitoring import SummaryWriter
from keras_m3ae.training.monitoring import TensorBoardScalars
from keras_m3ae.training.monitoring import writes_here

__getattr__ = moved_names(
    __name__,
    {
        "LARS": "keras_m3ae.optimizers",
        "layer_decay_multipliers": "keras_m3ae.optimizers",
        "layer_ids": "keras_m3ae.optimizers",
        "learning_rate_multipliers": "keras_m3ae.optimizers",
        "scaled_learning_rate": "keras_m3ae.optimizers",
        "warmup_cosine_schedule": "keras_m3ae.optimizers",
        "with_learning_rate_multipliers": "keras_m3ae.optimizers",
        "ClassificationAccuracy": "keras_m3ae.losses",
        "ClassificationCrossentropy": "keras_m3ae.losses",
    },
)
