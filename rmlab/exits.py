"""How an ``rmlab`` command ends: its exit code, and one line for every error that reaches the entry point.

``run_command`` wraps the Hydra entry point. Hydra normally prints its own errors (up to two dozen lines) and exits 1;
with ``HYDRA_FULL_ERROR=1`` set for the duration of the call it raises them instead, and they end here:

| what ended the command                                   | exit code | printed                                        |
|----------------------------------------------------------|-----------|------------------------------------------------|
| success (a sweep: every job FINISHED, reused or pruned)   | 0         |                                                |
| a Hydra error: unknown option, unknown key, bad override | 2         | ``rmlab: error: ...``, Hydra's choices kept     |
| a config error, an unwritable folder or store            | 2         | ``rmlab: error: ...``                          |
| a failed run; a sweep with a failed job or that failed   | 1         | ``rmlab: run failed: ...`` / the sweep summary |
| Ctrl-C / SIGTERM                                         | 130 / 143 | ``rmlab: interrupted (SIGTERM)``               |
| anything else (a bug)                                    | 1         | the traceback                                  |

A sweep whose parent run is still open when the command stops (interrupted, a worker process died, an error in the
sweeper) is closed here with its summary, before interpreter shutdown begins. Set ``HYDRA_FULL_ERROR=1`` yourself to
get Hydra's full traceback instead of the one line.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from rmlab.credentials import redact
from rmlab.errors import Abort, ConfigError, RmlabError


def run_command(hydra_main: Callable[[], Any]) -> NoReturn:
    """Run the Hydra entry point and exit with the code the table above gives."""
    from rmlab import collector, sweep_parent
    from rmlab.paths import expose_plugins

    expose_plugins()
    # The user's own HYDRA_FULL_ERROR, not the one an rmlab parent process set (a DDP rank inherits its environment).
    user_full = None if os.environ.get(_OURS) else os.environ.get("HYDRA_FULL_ERROR")
    os.environ.update({"HYDRA_FULL_ERROR": "1", _OURS: "1"})
    sweep_parent.reset_exit_code()
    collector.skip_final_collections()  # the shutdown's collector passes skip the libraries' objects
    try:
        hydra_main()
        code = sweep_parent.exit_code()
    except BaseException as err:  # noqa: BLE001 - every way out gets its exit code
        _restore_env(user_full)
        code = _ended(err.error if isinstance(err, Abort) else err, full=user_full not in (None, "0", ""))
    finally:
        _restore_env(user_full)
        collector.release()  # a sweep's frozen objects: back in the collector's care
    sys.stdout.flush()
    sys.exit(code)


_OURS = "RMLAB_SET_HYDRA_FULL_ERROR"


def _restore_env(user_full: str | None) -> None:
    os.environ.pop(_OURS, None)
    if user_full is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = user_full


def _ended(err: BaseException, full: bool) -> int:
    """Close an open sweep with ``err``, print what the user needs, return the exit code."""
    from rmlab import jobs, lifecycle, signals, sweep_parent
    from rmlab.signals import Interrupted

    sweep_code = sweep_parent.close_current(err)
    signum = err.signum if isinstance(err, Interrupted) else None
    if signum is None and isinstance(err, (KeyboardInterrupt, SystemExit)):
        signum = signals.last_received()
    if isinstance(err, SystemExit) and signum is None:
        code = err.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    if signum is not None or isinstance(err, KeyboardInterrupt):
        signum = signum or 2
        print(f"rmlab: interrupted ({signals.name(signum)})", file=sys.stderr)
        return 128 + signum
    if full:
        traceback.print_exception(err)
        return sweep_code or 1
    if sweep_parent.is_hydra_config_error(err):
        print(f"rmlab: error: {hydra_error_line(err)}", file=sys.stderr)
        return 2
    variable = _unset_copied_variable(err)
    if variable is not None:
        print(f"rmlab: error: hydra.job.env_copy names {variable}, which is not set in the environment: set it, or "
              "leave it out of hydra.job.env_copy", file=sys.stderr)
        return 2
    if isinstance(err, ConfigError) or _bad_flags(err):
        print(f"rmlab: error: {redact(str(err))}", file=sys.stderr)
        return 2
    if isinstance(err, RmlabError):
        print(f"rmlab: failed: {redact(str(err))}", file=sys.stderr)
        return 1
    if isinstance(err, OSError) and not jobs.task_started:
        where = f" {err.filename}" if err.filename else ""
        print(f"rmlab: error: cannot create{where}: {err.strerror or err}. Run from a folder you can write, or set "
              "hydra.run.dir (hydra.sweep.dir with -m) to one", file=sys.stderr)
        return 2
    if lifecycle.is_dead_worker(err):
        print(f"rmlab: sweep stopped: {redact(lifecycle.describe(err))}", file=sys.stderr)
        return sweep_code or 1
    traceback.print_exception(err)
    return sweep_code or 1


def _bad_flags(err: BaseException) -> bool:
    """Hydra refusing the command line's flags before any job (``-m --cfg job``: "Only one of --run, --multirun, ...
    can be specified"), which it raises as a bare ValueError from its own code."""
    from rmlab import jobs

    if not isinstance(err, ValueError) or jobs.task_started:
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename


# -- Hydra's errors in one line ------------------------------------------------------------------------------------

_NOISE = ("full_key:", "object_type=", "reference_type=", "value_type=", "Set the environment variable",
          "To append to your config use")


def hydra_error_line(err: BaseException) -> str:
    """Hydra's message (and its OmegaConf cause) in one line, keeping the list of available options; an unknown key
    is named with the valid keys at its place in the config."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        line = unknown_key_line(str(cause.full_key))
        if line:
            return line
    text = str(err).split("\nConfig search path:")[0]
    if isinstance(cause, Exception) and str(cause) and str(cause) not in text:
        text += "\n" + str(cause)
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if raw.startswith("\t") and parts:  # an option of the list above it
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
    joined = " ".join(p if p.endswith((".", ":", ",")) or p is parts[-1] else p + "." for p in parts)
    return joined.replace("In 'config': ", "")


def _unset_copied_variable(err: BaseException) -> str | None:
    """The variable named in ``hydra.job.env_copy`` that is not set, when composing the config failed on it (Hydra
    raises a bare KeyError from ``os.environ``, as does ``rmlab.compose_template``, which copies it the same way)."""
    if not isinstance(err, KeyError) or not err.args:
        return None
    copying = any("env_set[key] = os.environ[key]" in (frame.line or "")
                  for frame in traceback.extract_tb(err.__traceback__))
    return str(err.args[0]) if copying else None


def unknown_key_line(key: str) -> str | None:
    """``loss.deltaa is not a key of loss (cross_entropy): its keys are label_smoothing, class_weights`` with a
    suggestion when one is close; None when the valid keys cannot be found (the line then keeps Hydra's text)."""
    parent, _, leaf = key.rpartition(".")
    found = _valid_keys(parent, key)
    if found is None:
        return None
    keys, option = found
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.6)
    where = f"{parent} ({option})" if parent and option else parent or "the config"
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return f"{key} is not a key of {where}: {hint}valid keys: {', '.join(keys)}"


def _valid_keys(parent: str, bad_key: str) -> tuple[list[str], str | None] | None:
    """The keys of ``parent`` and the name of the option selected there (``mse`` for ``loss``) in the first job of
    the command line (without ``bad_key``) whose ``parent`` lacks ``bad_key``: in a sweep over options
    (``loss=huber,mse loss.delta=0.5``) the option that has no such key, not merely the first one. None if no such
    config can be composed."""
    try:
        import itertools

        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import DictConfig, OmegaConf

        from rmlab.paths import CONFIG_DIR

        config_dir, config_name, overrides = _command_line(sys.argv[1:])
        choices = []  # per override: the lines of its values (one, or one per value of a sweep)
        for override in OverridesParser.create().parse_overrides(overrides):
            if override.get_key_element().lstrip("+~") == bad_key:
                continue
            if override.is_sweep_override():
                values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
                if values:
                    choices.append(values)
            else:
                choices.append([override.input_line or ""])
        if config_dir:
            choices.append([f"hydra.searchpath=[file://{os.path.abspath(config_dir)}]"])
        leaf = bad_key.rpartition(".")[2]
        for kept in itertools.islice(itertools.product(*choices), 16):  # the jobs, in the sweep's order
            GlobalHydra.instance().clear()
            with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
                cfg = compose(config_name or "config", overrides=list(kept))
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig):
                return None
            keys = [str(k) for k in node.keys() if not str(k).startswith("_") and str(k) != "hydra"]
            if leaf not in keys:
                option = node.get("name") if parent else None
                return keys, option if isinstance(option, str) else None
        return None
    except Exception:
        return None


def _command_line(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(--config-dir, --config-name, overrides) of Hydra's command line."""
    config_dir = config_name = None
    overrides: list[str] = []
    valued = {"-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path", "-c", "--cfg", "-p",
              "--package", "--experimental-rerun"}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg.startswith("-"):
            if name in valued and not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            if name in ("-cd", "--config-dir"):
                config_dir = value
            elif name in ("-cn", "--config-name"):
                config_name = value
        else:
            overrides.append(arg)
        i += 1
    return config_dir, config_name, overrides
