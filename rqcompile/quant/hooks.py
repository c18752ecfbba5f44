"""Training hooks for estimators with state: ``rq.step``, ``rq.aux_loss``, ``rq.distill_loss``.

The curricula of ``pege`` and ``gdnsq`` (docs/method.md#estimators) need the training step, and both add
loss terms. Instead of hidden global state, the step lives in a buffer of every stateful
quantizer and the training loop calls two explicit functions::

    loss = task_loss + rq.aux_loss(qat)   # after the forward
    loss.backward(); opt.step()
    rq.step(qat)                          # once per optimizer step

Both are no-ops (``0`` / a zero tensor) for ``ridge`` and ``ste`` models, so one loop serves
every estimator. :func:`finalize_for_convert` is what ``rq.convert`` runs first.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rqcompile.quant.estimators import ESTIMATORS
from rqcompile.quant.modules import RQQuantize

__all__ = ["aux_loss", "distill_loss", "finalize_for_convert", "step"]


def _stateful(model: nn.Module) -> list[RQQuantize]:
    return [
        m for m in model.modules() if isinstance(m, RQQuantize) and m.estimator_state is not None
    ]


def step(model: nn.Module) -> int:
    """Advance every estimator schedule in ``model`` by one step; return the new step.

    Call it once per optimizer step (after ``opt.step()``). The step is a buffer of each
    stateful quantizer, so it is saved by ``state_dict`` and restored by ``load_state_dict``.

    Returns:
        The new step (the largest over quantizers), or ``0`` when ``model`` has no stateful
        estimator (``ridge``, ``ste``, a float model).

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(8, 4), (torch.randn(2, 8),), "A2W2",
        ...                  estimator="pege", estimator_options={"ramp_steps": 10})
        >>> rq.step(qat), rq.step(qat)
        (1, 2)
    """
    states = [m.estimator_state for m in _stateful(model)]
    steps = [st.advance() for st in states]  # type: ignore[union-attr,operator]
    return max(steps, default=0)


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the estimators' auxiliary losses for the last forward; add it to the task loss.

    * ``pege``: ``γ·mean((W - detach(Q(W)))²)`` for each weight (docs/method.md#pege).
    * ``gdnsq``: the exterior-point penalty ``μ_t·max(0, mean(β) - b_t)²`` (docs/method.md#gdnsq).

    Returns:
        A scalar tensor (zero, without grad, when there is nothing to add).

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(8, 4), (torch.randn(2, 8),), "A2W2")
        >>> float(rq.aux_loss(qat))
        0.0
    """
    groups: dict[str, list[nn.Module]] = {}
    for m in _stateful(model):
        groups.setdefault(m.estimator, []).append(m.estimator_state)  # type: ignore[arg-type]
    terms = [t for name, states in groups.items() if (t := ESTIMATORS[name].group_loss(states))]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.reshape(()) for t in terms]).sum()


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Symmetric KL (Jeffreys) divergence between student and a frozen teacher, per row.

    ``J = KL(p_t ‖ p_s) + KL(p_s ‖ p_t)`` over the last dim, averaged over rows and scaled by
    ``temperature²``; the teacher is detached. gdnsq's optional distillation from the float
    model (docs/method.md#gdnsq item 6): ``loss = task + α·rq.distill_loss(qat(x), float_model(x))``.

    Example:
        >>> import torch, rqcompile as rq
        >>> z = torch.randn(3, 5)
        >>> float(rq.distill_loss(z, z))
        0.0
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    j = ((t.exp() - s.exp()) * (t - s)).sum(-1)
    return j.mean() * temperature**2


def finalize_for_convert(gm: nn.Module) -> nn.Module:
    """A copy of ``gm`` with every estimator state made final (``gm`` itself when stateless).

    ``gdnsq`` widths are rounded (``RQWarning`` naming the layer when that changes the
    model) and ``pege`` checks its curriculum finished (``ConfigError`` otherwise).
    """
    if not _stateful(gm):
        return gm
    out = copy.deepcopy(gm)
    for m in _stateful(out):
        m.finalize_()
    return out
