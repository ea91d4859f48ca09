"""Training pipeline: ten stages from raw data to a registered, compiled ONNX model.

    from fastml.pipeline import train, resume, load_config
    result = train("examples/pipelines/breast_cancer.toml")   # or a PipelineConfig / dict
    result.model_ref, result.metrics, result.onnx_path

Stages: ingest, validate, features, split, tune, train, cross_validate, evaluate, export, register;
outputs under ``$FASTML_HOME/runs/<run_id>/``. Heavy libraries load inside the stages.
"""

from __future__ import annotations

from fastml.pipeline.config import PipelineConfig, from_dict, load_config, validate_config
from fastml.pipeline.run import STAGES, list_runs, open_run
from fastml.pipeline.runner import RunResult, resume, train

__all__ = [
    "PipelineConfig",
    "from_dict",
    "load_config",
    "validate_config",
    "STAGES",
    "list_runs",
    "open_run",
    "RunResult",
    "resume",
    "train",
]
