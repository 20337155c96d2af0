"""The file stored with every rmlab model (MLflow's "models from code"): loading a model runs it, and it names the
pyfunc class, so no pickled object is stored or unpickled. rmlab must be importable where the model is loaded."""

from mlflow.models import set_model

from rmlab.serving.pyfunc import RmlabModel

set_model(RmlabModel())
