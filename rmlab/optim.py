"""Optimizers and learning-rate schedulers from ``conf/optimizer/*.yaml``, validated before training."""

from typing import Any

import torch

from rmlab.errors import ConfigError, check

SCHEDULERS = ("none", "cosine", "step", "exponential")


def validate_optimizer(cfg: dict[str, Any]) -> None:
    """Check every optimizer and scheduler value; raise ConfigError naming the key, the value and the valid range."""
    name = cfg.get("name")
    check(name in OPTIMIZERS, f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    lr = cfg.get("lr")
    check(isinstance(lr, (int, float)) and lr > 0, f"optimizer.lr must be > 0, got {lr}")
    wd = cfg.get("weight_decay", 0.0)
    check(isinstance(wd, (int, float)) and wd >= 0, f"optimizer.weight_decay must be >= 0, got {wd}")
    if "betas" in cfg:
        betas = list(cfg["betas"])
        check(len(betas) == 2 and all(0 <= b < 1 for b in betas),
              f"optimizer.betas must be two numbers in [0, 1), got {betas}")
    if "momentum" in cfg:
        check(0 <= cfg["momentum"] < 1, f"optimizer.momentum must be in [0, 1), got {cfg['momentum']}")
        check(not cfg.get("nesterov") or cfg["momentum"] > 0, "optimizer.nesterov needs optimizer.momentum > 0")
    sched = cfg.get("scheduler") or {"name": "none"}
    check(sched.get("name") in SCHEDULERS,
          f"optimizer.scheduler.name must be one of {list(SCHEDULERS)}, got {sched.get('name')!r}")
    if sched["name"] == "step":
        check(int(sched.get("step_size", 0)) >= 1,
              f"optimizer.scheduler.step_size must be >= 1, got {sched.get('step_size')}")
    if sched["name"] in ("step", "exponential"):
        check(0 < sched.get("gamma", 0) <= 1, f"optimizer.scheduler.gamma must be in (0, 1], got {sched.get('gamma')}")
    if sched["name"] == "cosine":
        check(0 <= sched.get("min_lr", 0) < lr,
              f"optimizer.scheduler.min_lr must be in [0, lr={lr}), got {sched.get('min_lr')}")


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
