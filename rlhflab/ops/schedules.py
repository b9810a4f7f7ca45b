"""Learning-rate schedules (pure functions of the step; no torch state)."""

from __future__ import annotations

from collections.abc import Callable


def noam_lr(step: int, *, d_model: int, warmup: int, lr_mul: float) -> float:
    """The Transformer ("Noam") learning rate at optimizer step `step`, counted from 1.

    lr = lr_mul * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
    (Vaswani et al. 2017, "Attention Is All You Need", eq. 3; `lr_mul` is the constant factor
    of the common ScheduledOptim / "AttentionScheduler" code). It rises linearly for `warmup`
    steps, peaks at step == warmup with lr_mul * (d_model * warmup)**-0.5, then decays as
    step**-0.5. Step 0 is treated as step 1. Raises ValueError for d_model < 1 or warmup < 1.
    """
    if d_model < 1 or warmup < 1:
        raise ValueError(f"noam_lr needs d_model >= 1 and warmup >= 1 (got d_model={d_model}, warmup={warmup})")
    step = max(int(step), 1)
    return lr_mul * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def noam_lambda(d_model: int, warmup: int, lr_mul: float, base_lr: float) -> Callable[[int], float]:
    """A `torch.optim.lr_scheduler.LambdaLR` multiplier: step -> noam_lr(step + 1) / base_lr.

    LambdaLR multiplies the optimizer's initial lr (`base_lr`) by this factor and calls it
    with 0 before the first step, so the first update uses noam_lr(1). Raises ValueError for
    base_lr <= 0 (and what noam_lr raises).
    """
    if not base_lr > 0:
        raise ValueError(f"noam_lambda needs base_lr > 0 (got {base_lr}); create the optimizer with lr=base_lr")
    noam_lr(1, d_model=d_model, warmup=warmup, lr_mul=lr_mul)  # check the arguments now, not at step 1

    def factor(step: int) -> float:
        return noam_lr(step + 1, d_model=d_model, warmup=warmup, lr_mul=lr_mul) / base_lr

    return factor
