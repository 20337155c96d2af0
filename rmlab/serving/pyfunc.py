"""The ``mlflow.pyfunc.PythonModel`` of every rmlab model: the network and its kind's input/output handling.

``mlflow.pyfunc.load_model("runs:/<run id>/model")`` unpickles ``RmlabModel`` (by reference: rmlab must be
installed where the model is loaded), then ``load_context`` reads the two artifacts written at export: ``spec``
(``rmlab_model.json``: the model config, sizes, the kind's preprocessing) and ``weights`` (the state dict, loaded
with ``weights_only=True``). ``predict`` takes a pandas DataFrame of raw inputs and returns one of predictions.
"""

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd  # also the predict type hint, which MLflow reads: a DataFrame in, a DataFrame out
import torch

from rmlab.serving.io import ModelIO, load_io

SPEC_FILE = "rmlab_model.json"
WEIGHTS_FILE = "weights.pt"


def load_network(spec: dict[str, Any], weights: str | Path) -> tuple[ModelIO, torch.nn.Module]:
    """The kind's ``ModelIO`` and the network with its weights, from a spec and a weights file."""
    io = load_io(spec)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return io, io.build(state)


class RmlabModel(mlflow.pyfunc.PythonModel):
    """Serves one trained rmlab network; the per-kind work is done by the spec's ``ModelIO``."""

    def load_context(self, context: Any) -> None:
        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.io, self.net = load_network(self.spec, context.artifacts["weights"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.io.predict(self.net, frame, params)
