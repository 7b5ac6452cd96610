"""Training: the run's defaults and recipes (:mod:`.config`), optimizer and schedule
(:mod:`.optim`), losses, datasets and data order (:mod:`.datasets`), the loop (:mod:`.loop`), the
run folder (:mod:`.run_folder`), ``metrics.csv`` (:mod:`.logs`), figures (:mod:`.figures`) and
checkpoints (:mod:`.checkpoint`)."""
from .config import TrainConfig, make_config
from .loop import TrainingDiverged, train

__all__ = ["TrainConfig", "make_config", "TrainingDiverged", "train"]
