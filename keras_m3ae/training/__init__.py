"""Long runs: resumable fitting, atomic checkpoints and presets, guards, monitoring.

Fine-tuning augmentation and classification datasets are in
`keras_m3ae.finetune`; the optimizers, schedules and recipes in
`keras_m3ae.optimizers`; the classification loss and metric in
`keras_m3ae.losses`.
"""

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
from keras_m3ae.training.run_lock import RunLock
from keras_m3ae.training.run_lock import RunLockError
from keras_m3ae.training.monitoring import RunSummary
from keras_m3ae.training.monitoring import SummaryWriter
from keras_m3ae.training.monitoring import TensorBoardScalars
from keras_m3ae.training.monitoring import writes_here
