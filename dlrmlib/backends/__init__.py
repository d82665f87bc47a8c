"""Runtimes that run a DLRM, behind one small interface (as MLPerf's reference harness has):
`name`, `version`, `predict(inputs) -> scores` for one batch of model inputs."""
from dlrmlib.backends.base import Backend, batch_inputs, measure, model_inputs, predict_all

__all__ = ["Backend", "batch_inputs", "measure", "model_inputs", "predict_all"]
