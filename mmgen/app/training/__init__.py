"""Training on accelerate: one loop for tokenizers and generators, YAML configs, resumable checkpoints."""

from .builders import build_pipeline, build_tokenizer, load_tokenizer
from .config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    parse_override,
)
from .stopping import TrainingInterrupted
from .trainer import (
    CheckpointError,
    Trainer,
    check_run_start,
    encode_dataset,
    finished_report,
    list_checkpoints,
    train,
    verify_checkpoint,
    weights_sha256,
)

__all__ = [
    "TrainConfig",
    "DataConfig",
    "OptimConfig",
    "EvalConfig",
    "CheckpointConfig",
    "load_config",
    "parse_override",
    "Trainer",
    "train",
    "TrainingInterrupted",
    "check_run_start",
    "finished_report",
    "encode_dataset",
    "list_checkpoints",
    "CheckpointError",
    "verify_checkpoint",
    "weights_sha256",
    "build_pipeline",
    "build_tokenizer",
    "load_tokenizer",
]
