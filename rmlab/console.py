"""What a run prints: the resolved config in a few lines at the start, a short block of results at the end."""

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

GROUPS = ("task", "model", "loss", "reward", "feedback", "optimizer", "trainer", "logger")


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) + "}"
    return str(value)


def compact_config(cfg: DictConfig) -> str:
    """One line per group: ``loss      huber  delta=1.0``."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    lines = []
    for group in GROUPS:
        node = dict(resolved.get(group) or {})
        name = node.pop("name", "")
        node.pop("_target_", None)
        lines.append(f"  {group:<9} {name:<12} " + " ".join(f"{k}={_inline(v)}" for k, v in node.items()))
    extras = {k: v for k, v in resolved.items() if k not in GROUPS}
    lines.append("  " + " ".join(f"{k}={_inline(v)}" for k, v in extras.items()))
    return "rmlab config:\n" + "\n".join(line.rstrip() for line in lines)


def result_block(metrics: Mapping[str, float], reward_name: str, run_id: str | None, store: str | None,
                 dashboard: str | None) -> str:
    """The end-of-run summary: test loss and reward, and where the run is stored."""
    lines = [
        "rmlab result:",
        f"  test/loss    {metrics.get('test/loss', float('nan')):.4f}",
        f"  test/reward  {metrics.get('test/reward', float('nan')):.4f}  ({reward_name})",
    ]
    if "val/selected_reward" in metrics:
        which = "best" if "val/best_reward" in metrics else "last"
        epoch = metrics.get("val/selected_epoch")
        at = f", epoch {int(epoch) + 1}" if epoch is not None and math.isfinite(epoch) else ""
        lines.append(f"  val/reward   {metrics['val/selected_reward']:.4f}  (of the tested weights: {which}{at})")
    if run_id:
        lines += [f"  run id       {run_id}", f"  store        {store}", f"  dashboard    {dashboard}"]
    else:
        lines.append("  not tracked (logger=none or trainer.fast_dev_run)")
    return "\n".join(lines)
