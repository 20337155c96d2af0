"""Where rmlab's configs live: ``rmlab/conf`` inside an installed wheel, ``conf/`` at the top of a source checkout."""

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
