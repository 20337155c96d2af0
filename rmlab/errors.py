"""Exception types for misconfiguration, raised before any training starts.

Each message names the problem and the valid choices, so a user can fix the command line without reading code.
"""


class RmlabError(Exception):
    """Base class of every error rmlab raises on purpose."""


class ConfigError(RmlabError, ValueError):
    """A config value is invalid (out of range, unknown name, wrong type)."""


class IncompatibleError(ConfigError):
    """A task, loss, reward (or feedback) combination that cannot work together."""


class DataError(ConfigError):
    """A user's data file cannot be used (missing column, non-numeric values, NaN, empty, one class)."""


class StoreError(ConfigError):
    """The MLflow store cannot be written or opened (an unwritable folder, a broken database)."""


class NonFiniteLossError(RmlabError, FloatingPointError):
    """The training loss became NaN or infinite."""


class Abort(BaseException):
    """Stops the command from inside a Hydra callback with ``error``: Hydra turns an ordinary exception raised there
    into a warning and goes on (a sweep without its parent run), but lets a BaseException through."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


class StoreUnreachable(ConfigError):
    """The tracking server named by the config or $MLFLOW_TRACKING_URI does not answer: reported before any run."""


class MetricsNotStored(RmlabError):
    """The store went away during a run and stayed away: the unsent metrics are kept in a local file to replay."""
