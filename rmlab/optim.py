"""Optimizers and learning-rate schedulers from ``conf/optimizer/*.yaml``, validated before training.

The values are checked by ``validate_optimizer`` (in ``rmlab.validate``, which needs no torch, so a bad value is
reported before torch loads); ``build_optimizer`` checks them again, for callers that skip ``rmlab.validate``.
"""

from typing import Any

import torch

from rmlab.errors import ConfigError
from rmlab.validate import SCHEDULERS, validate_optimizer

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizer", "validate_optimizer"]

def _adam(params, cfg):
    return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]))


def _adamw(params, cfg):
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]))


def _sgd(params, cfg):
    return torch.optim.SGD(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], momentum=cfg["momentum"],
                           nesterov=cfg["nesterov"])


OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def build_optimizer(params, cfg: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """Return what LightningModule.configure_optimizers returns: the optimizer and, if configured, its scheduler
    (stepped once per epoch)."""
    validate_optimizer(cfg)
    optimizer = OPTIMIZERS[cfg["name"]](params, cfg)
    sched = cfg.get("scheduler") or {"name": "none"}
    if sched["name"] == "none":
        return {"optimizer": optimizer}
    if sched["name"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs),
                                                               eta_min=sched["min_lr"])
    elif sched["name"] == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(sched["step_size"]), gamma=sched["gamma"])
    elif sched["name"] == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=sched["gamma"])
    else:  # pragma: no cover - validate_optimizer rejects it first
        raise ConfigError(f"unknown scheduler {sched['name']!r}")
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
