"""A trained rmlab model as an MLflow model: logged with each run, loaded with ``mlflow.pyfunc.load_model``, fed raw
inputs (a table of the original feature columns, or texts), answering with predictions in the user's units.

- ``io``: one small class per output kind (classifier, regressor, feature scorer, text pair scorer): its input
  columns, checks, preprocessing (standardisation, tokenizer), output columns and input example. A new kind (a
  language model) adds a class here and registers it for its (output kind, input type).
- ``pyfunc``: the ``mlflow.pyfunc.PythonModel`` that rebuilds the network from the saved spec and weights and hands
  each call to its kind's class.
- ``export``: writes the spec and weights of a finished run and logs them as the run's model (``runs:/<id>/model``),
  optionally registered.
"""
