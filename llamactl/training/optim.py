"""Optimizer and scheduler builders for the ``optimizer:`` / ``scheduler:`` config sections."""

from __future__ import annotations

from typing import Iterable

import torch

from llamactl.config.schema import OptimizerSection, SchedulerSection
from llamactl.errors import ConfigError


class DecoupledLionW(torch.optim.Optimizer):
    """Lion (Chen et al., 2023) with weight decay decoupled from the learning rate, as in LLM Foundry:
    update = sign(β1·m + (1-β1)·g); m ← β2·m + (1-β2)·g; p ← p·(1 - wd·lr/initial_lr) - lr·update."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, initial_lr=lr))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            decay = 1 - wd * lr / group["initial_lr"] if wd else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                if decay != 1.0:
                    p.mul_(decay)
                update = m.mul(b1).add_(p.grad, alpha=1 - b1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


def build_optimizer(cfg: OptimizerSection, params: list[torch.nn.Parameter], *, on_cuda: bool) -> torch.optim.Optimizer:
    """The optimizer named in the config, over the trainable parameters only."""
    if not params:
        raise ConfigError("the model has no trainable parameters; check peft_config.target_modules")
    if len(cfg.betas) != 2:
        raise ConfigError(f"optimizer.betas must have two values, got {cfg.betas}")
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.lr <= 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg.lr}")
    if cfg.name == "decoupled_adamw":
        from composer.optim import DecoupledAdamW

        return DecoupledAdamW(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        fused = on_cuda if cfg.fused is None else cfg.fused
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=fused or None)
    return DecoupledLionW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: SchedulerSection):
    """A Composer scheduler for the config (time strings such as '100ba' are Composer's)."""
    from composer.optim import (ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler,
                                LinearWithWarmupScheduler)

    if cfg.name == "cosine_with_warmup":
        return CosineAnnealingWithWarmupScheduler(t_warmup=cfg.t_warmup, t_max=cfg.t_max, alpha_f=cfg.alpha_f)
    if cfg.name in ("linear", "linear_decay_with_warmup"):
        return LinearWithWarmupScheduler(t_warmup=cfg.t_warmup, alpha_f=cfg.alpha_f, t_max=cfg.t_max)
    return ConstantWithWarmupScheduler(t_warmup=cfg.t_warmup, t_max=cfg.t_max)
