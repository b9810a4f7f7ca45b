"""The Noam learning-rate schedule (Vaswani et al. 2017, eq. 3) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlhflab.ops.schedules import noam_lambda, noam_lr

BASE = dict(d_model=512, warmup=4000, lr_mul=1.0)
# Peak, at step == warmup: 512**-0.5 * 4000**-0.5 = (512 * 4000)**-0.5 = 2_048_000**-0.5
# sqrt(2_048_000) = 1431.0835 (1431.0835**2 = 2_048_000.0), so the peak is 1 / 1431.0835 = 6.98771e-4.
PEAK = 6.98771e-4


def test_peak_at_warmup():
    assert noam_lr(4000, **BASE) == pytest.approx(PEAK, rel=1e-5)
    assert noam_lr(4000, **BASE) == pytest.approx(1 / math.sqrt(2_048_000), rel=1e-12)
    assert noam_lr(4000, **BASE) > max(noam_lr(3999, **BASE), noam_lr(4001, **BASE))


def test_linear_rise_during_warmup():
    # step * warmup**-1.5 is linear: 1000 / 4000 of the way up is a quarter of the peak
    assert noam_lr(1000, **BASE) == pytest.approx(PEAK / 4, rel=1e-5)
    assert noam_lr(2000, **BASE) == pytest.approx(2 * noam_lr(1000, **BASE), rel=1e-12)


def test_inverse_square_root_decay_after_warmup():
    # step**-0.5: four times the steps, half the rate
    assert noam_lr(16000, **BASE) == pytest.approx(PEAK / 2, rel=1e-5)
    assert noam_lr(64000, **BASE) == pytest.approx(PEAK / 4, rel=1e-5)


def test_lr_mul_scales_and_step_zero_is_step_one():
    assert noam_lr(4000, d_model=512, warmup=4000, lr_mul=0.3) == pytest.approx(0.3 * PEAK, rel=1e-5)
    assert noam_lr(0, **BASE) == noam_lr(1, **BASE) == pytest.approx(512**-0.5 * 4000**-1.5)


@pytest.mark.parametrize("bad", [dict(d_model=0), dict(warmup=0), dict(warmup=-5)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        noam_lr(10, **{**BASE, **bad})
    with pytest.raises(ValueError):
        noam_lambda(**{**BASE, **bad}, base_lr=1e-3)
    with pytest.raises(ValueError, match="base_lr"):
        noam_lambda(**BASE, base_lr=0.0)


def test_lambda_lr_follows_the_curve():
    import torch

    base_lr = 1e-3
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam_lambda(512, 10, 1.0, base_lr))
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])  # the rate this update uses
        optimizer.step()
        scheduler.step()
    expected = [noam_lr(step, d_model=512, warmup=10, lr_mul=1.0) for step in range(1, 31)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert max(range(30), key=seen.__getitem__) == 9  # the 10th update, step == warmup
