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
