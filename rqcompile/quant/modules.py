"""``RQQuantize``: the nn.Module that ``prepare`` inserts before every quantized matmul operand.

One module quantizes one operand (a weight or an activation) of one layer. It knows the
operand's reduction axis, so blocks always run along K (docs/method.md#blocks):

* Linear weight ``(N, K)`` and activations ``(..., K)``: ``layout="last"``.
* Conv weight ``(O, C/g, *kernel)``: ``layout="conv_weight"``, reduction order ``(kh, kw, C/g)``.
* Conv activation ``(N, C, H, W)``: ``layout="channels"``, blocks along C, per pixel.
* Right operand of a matmul ``(..., K, N)``: ``layout="rows"`` (K is dim -2).

For ``ridge`` and ``ste`` the module has no state besides its (frozen) spec, so it is safe
under DDP and ``torch.compile``, and the model's ``state_dict`` keys are unchanged by
``prepare``. Estimators with training state (``pege``, ``gdnsq``; docs/estimators.md) keep it in a
child module ``estimator_state`` built by their row of
:data:`rqcompile.quant.estimators.ESTIMATORS`: buffers (the step) and parameters (learned
widths), so it is saved in ``state_dict`` and synchronised by DDP. Load a *float* checkpoint
into such a model with ``strict=False`` (or load it before ``prepare``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rqcompile.config.spec import NMSparsity, PerTensor, QuantSpec
from rqcompile.quant.estimators import ESTIMATORS, runtime_quantizer
from rqcompile.quant.fake_quant import FakeQuantResult, fake_quant_blocks
from rqcompile.quant.primitives import QFormat, to_blocks

__all__ = ["LAYOUTS", "RQQuantize"]

LAYOUTS = ("last", "rows", "channels", "conv_weight")


class RQQuantize(nn.Module):
    """Quantize → (ridge) dequantize one operand; returns a tensor of the input's shape.

    Args:
        spec: bits, symmetry and granularity of this operand.
        role: ``"weight"`` or ``"activation"`` (only for printing and errors).
        layout: where K lives (see module docstring).
        block: resolved block size along K (``prepare`` resolves ``PerGroup``/``PerChannel``).
        estimator: a key of :data:`~rqcompile.quant.estimators.ESTIMATORS`.
        ridge_lambda: λ of the ridge fit.
        sparsity: N:M magnitude sparsity (weights only).
        layer: layer key, for messages.
        estimator_options: options of stateful estimators (already validated by
            ``LayerSpec``); missing ones take the table's defaults.
    """

    def __init__(
        self,
        spec: QuantSpec,
        *,
        role: str,
        layout: str,
        block: int,
        estimator: str = "ridge",
        ridge_lambda: float = 0.01,
        sparsity: NMSparsity | None = None,
        layer: str = "",
        estimator_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.role = role
        self.layout = layout
        self.block = block
        self.estimator = estimator
        self.ridge_lambda = ridge_lambda
        self.sparsity = sparsity
        self.layer = layer
        self.fmt = QFormat(spec.bits, spec.symmetric, spec.grid)
        row = ESTIMATORS[estimator]
        self.estimator_state: nn.Module | None = None  # an EstimatorState (estimators.py)
        if row.state is not None:
            opts = {**row.options, **(estimator_options or {})}
            self.estimator_state = row.state(role=role, spec=spec, options=opts, layer=layer)

    @property
    def runtime_estimator(self) -> str:
        """The ``estimator`` attribute of the ``rq.quantize`` op that deploys this quantizer."""
        return runtime_quantizer(self.estimator, self.fmt)

    @torch.no_grad()
    def finalize_(self) -> None:
        """Make the training state final for ``convert`` (in place; ``convert`` works on a copy).

        ``gdnsq`` rounds its learned width and the spec follows it; ``pege`` checks that its
        curriculum finished. Stateless estimators do nothing.
        """
        st = self.estimator_state
        if st is None:
            return
        bits = st.finalize_(self)  # type: ignore[operator]
        if bits is not None and bits != self.spec.bits:
            self.spec = dataclasses.replace(self.spec, bits=int(bits))
            self.fmt = QFormat(self.spec.bits, self.spec.symmetric, self.spec.grid)

    # -- layout ---------------------------------------------------------------------------
    def k_last(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` with the reduction dimension last (conv weights: ``(O, kh*kw*C/g)``)."""
        if self.layout == "last":
            return x
        if self.layout == "rows":
            return x.transpose(-1, -2)
        if self.layout == "channels":
            return x.movedim(1, -1)
        return x.movedim(1, -1).reshape(x.shape[0], -1)  # (O, *kernel, C/g): (kh, kw, C) order

    def from_k_last(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.layout == "last":
            return y
        if self.layout == "rows":
            return y.transpose(-1, -2)
        if self.layout == "channels":
            return y.movedim(-1, 1)
        return y.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)

    def _blocks(self, xk: torch.Tensor) -> torch.Tensor:
        if isinstance(self.spec.granularity, PerTensor):
            return xk.reshape(1, 1, -1)
        return to_blocks(xk, self.block, where=f"layer {self.layer!r} ({self.role})")

    def fake_quant(self, x: torch.Tensor) -> FakeQuantResult:
        """Blocked fake-quant of ``x`` (K-last view); used by ``forward`` and ``convert``."""
        st = self.estimator_state
        if st is not None:  # a state with its own grid and codes (gdnsq) returns them
            own = st.fake_quant(self._blocks(self.k_last(x)))  # type: ignore[operator]
            if own is not None:
                return own  # type: ignore[no-any-return]
        nm = None if self.sparsity is None else (self.sparsity.n, self.sparsity.m)
        return fake_quant_blocks(
            self._blocks(self.k_last(x)),
            self.fmt,
            estimator=self.estimator,
            lam=self.ridge_lambda,
            nm=nm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xk = self.k_last(x)
        r = self.fake_quant(x)
        y = self.from_k_last(r.y.reshape(xk.shape), x.shape)
        if self.estimator_state is not None:
            y = self.estimator_state.after_forward(x, y)  # type: ignore[operator]
        return y

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer codes ``(..., K)`` (int16, K last) and per-block ``scale``/``offset`` ``(..., nb)``.

        Per-tensor params are expanded to one block per row so every consumer sees the same
        ``(rows, nb)`` layout.
        """
        xk = self.k_last(x)
        r = self.fake_quant(x)
        codes = r.codes.reshape(xk.shape).to(torch.int16)  # 8-bit affine codes reach 255
        scale, offset = r.scale.squeeze(-1), r.offset.squeeze(-1)
        if isinstance(self.spec.granularity, PerTensor):
            rows = xk.shape[:-1]
            scale = scale.reshape(1).expand(*rows, 1).contiguous()
            offset = offset.reshape(1).expand(*rows, 1).contiguous()
        return codes, scale, offset

    def describe(self) -> str:
        """One line, e.g. ``W 4b affine block=128 ridge λ=0.01 2:4``."""
        tag = "W" if self.role == "weight" else "A"
        gran = (
            "per-tensor" if isinstance(self.spec.granularity, PerTensor) else f"block={self.block}"
        )
        kind = self.spec.short().rsplit(" ", 1)[0]
        text = f"{tag} {kind} {gran} {self.estimator}"
        if self.estimator in ("ridge", "ridge_detached"):
            text += f" λ={self.ridge_lambda:g}"
        if self.sparsity is not None:
            text += f" {self.sparsity}"
        if self.estimator_state is not None:
            text += f" {self.estimator_state.describe()}"  # type: ignore[operator]
        return text

    def extra_repr(self) -> str:
        return self.describe()
