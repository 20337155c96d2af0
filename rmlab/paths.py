"""Where rmlab's configs live: ``rmlab/conf`` inside an installed wheel, ``conf/`` at the top of a source checkout."""

from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The folder holding ``config.yaml`` and one sub-folder per config group."""
    installed = _PACKAGE / "conf"
    if (installed / "config.yaml").is_file():
        return installed
    return _PACKAGE.parent / "conf"


CONFIG_DIR = config_dir()


def expose_plugins() -> None:
    """Make Hydra's plugin scan see rmlab's sweeper (``hydra_plugins/rmlab_optuna_sweeper``) under every install.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace package's ``__path__``. A plain ``pip install -e .``
    (setuptools' PEP 660 editable mode) maps our packages through an import hook whose placeholder path entry the walk
    cannot list, so the sweeper would be missing ("Could not find 'hydra/sweeper/rmlab_optuna'"). Adding the real
    folder to the namespace's path, before Hydra scans it, works for that install and changes nothing for the others.
    """
    import importlib.util

    spec = importlib.util.find_spec("hydra_plugins.rmlab_optuna_sweeper")
    if spec is None or not spec.origin:
        return
    import hydra_plugins

    folder = str(Path(spec.origin).resolve().parent.parent)
    if folder not in [str(Path(p).resolve()) for p in hydra_plugins.__path__ if Path(p).is_dir()]:
        hydra_plugins.__path__.append(folder)


def read_yaml(path: str | Path) -> dict:
    """A YAML file as plain containers (interpolations left as written), parsed once per version of the file (its
    size and modification time): what every job of a sweep reads again (the sweep's saved ``multirun.yaml``, a
    group's default options) costs one parse per process. The answer is shared: read it, never change it."""
    stat = Path(path).stat()
    return _read_yaml(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _read_yaml(path: str, mtime_ns: int, size: int) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
