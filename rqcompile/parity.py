"""``rq.check_parity``: does a lowered model compute what its QAT model computes?

A plain ``max |lowered - QAT|`` cannot answer that. The QAT forward runs fp32 GEMMs on
dequantized operands, the lowered model exact integer GEMMs with a float epilogue; the two
differ by ~1e-7, so an activation that lies within ~1e-5 of a rounding tie can get another
code, and in a deep model one such flip moves the outputs by up to a quantization step. A
tolerance loose enough for that (0.1) also passes real bugs (9% logit noise); a tight one
fails correct models. So the check looks at the codes:

1. run the QAT model, capturing the input of every activation quantizer;
2. run the IR on the reference kernels, capturing every ``rq.quantize`` input;
3. compare the codes in order; the *first* quantizer whose codes differ must differ only at
   near-ties (``|frac(z) - 1/2| < tie_tol`` on the QAT side; a real bug moves codes far from
   ties) — then re-feed the QAT input to that quantizer of the reference and run again, until
   no code differs;
4. with every flip re-fed, the reference must agree with QAT to ``float_tol`` (relative to
   the output magnitude; default 1e-5);
5. the built model (``exe``) is compared with the reference run of the same IR: equal to
   float tolerance, or (when the reference saw near-ties) explained by ties the target's
   codes cannot be captured for: flipping one of the reference's codes nearest a tie
   (``|frac(z) - 1/2| < target_tie_tol``, default 1e-3) must reproduce the built model's
   output to float tolerance, starting from the reference as it ran or, where step 3
   re-fed QAT's inputs, from the re-fed one (a build can round one tie as QAT does and
   cross another with its own float code). That tolerance is wider than ``tie_tol``
   because the target's float code between quantizers differs more from torch's than the
   reference's does: its vectorized ``erf``/``exp`` (``targets/tvm/kernels/fast_math.py``)
   are within 3.8e-7 absolute, which is 3e-5 of a code step for an 8-bit quantizer of a
   GELU output spanning ~3 and more for narrower ranges (a drawn shape of the char
   transformer flipped a code 3.05e-5 from its tie). Only the reproduction decides; the
   tolerance only picks which codes are tried.

The verdict is ``"exact"`` (no flip, agreement), ``"ties only"`` (every difference traced to a
rounding tie) or ``"real mismatch"`` (with the reason). ``report.line()`` is one line for logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Flip", "ParityReport", "check_parity"]


@dataclass(frozen=True)
class Flip:
    """Codes of one quantizer that differ between QAT and the reference."""

    index: int  # position among the model's activation quantizers
    layer: str
    count: int  # codes that differ
    total: int
    tie_distance: float  # largest |frac(z) - 1/2| among them (0 = exactly at the tie)


@dataclass
class ParityReport:
    verdict: str  # "exact" | "ties only" | "real mismatch"
    max_abs_diff: float  # max |exe - QAT| on the inputs
    scale: float  # max |QAT output|
    flips: list[Flip] = field(default_factory=list)
    refed_diff: float | None = None  # max |reference (flips re-fed) - QAT|
    target_diff: float = 0.0  # max |exe - reference| on the same IR
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict != "real mismatch"

    def line(self) -> str:
        """One line: the verdict and the numbers behind it."""
        s = f"parity: {self.verdict}; max |lowered - QAT| = {self.max_abs_diff:.2e}"
        if self.flips:
            worst = max(f.tie_distance for f in self.flips)
            s += (
                f"; {sum(f.count for f in self.flips)} code flip(s) in {len(self.flips)} "
                f"quantizer(s), all within {worst:.1e} of a rounding tie"
                if self.verdict != "real mismatch" or not self.reason.startswith("code")
                else ""
            )
        if self.refed_diff is not None and self.flips:
            s += f"; after re-feeding: {self.refed_diff:.2e}"
        if self.reason:
            s += f" ({self.reason})"
        return s

    def __str__(self) -> str:
        lines = [self.line()]
        for f in self.flips:
            lines.append(
                f"  flip at quantizer {f.index} ({f.layer}): {f.count} of {f.total} codes, "
                f"max distance to the tie {f.tie_distance:.2e}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _tie_distance(mod: Any, xk: torch.Tensor, flips: torch.Tensor) -> float:
    """Largest distance to the rounding boundary of the flipped elements (QAT side)."""
    from rqcompile.quant.primitives import grid

    try:
        xb = mod._blocks(xk).float()
        s_f, b_f = grid(xb, mod.fmt)
        z = ((xb - b_f) / s_f).reshape(flips.shape)
    except Exception:  # noqa: BLE001 - a granularity this estimate does not model
        return math.inf
    bits = mod.fmt.bits
    if bits == 1 and not mod.fmt.zero_one:  # sign codes; {0, 1} codes tie at z = 1/2 (below)
        d = z.abs()
    elif bits == 1.5:
        d = (z.abs() - 0.5).abs()
    else:
        d = (z - z.floor() - 0.5).abs()
    return float(d[flips].max()) if bool(flips.any()) else 0.0


def _ref_codes(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    from rqcompile.quant import reference as R

    opts = {k: a[k] for k in ("bits", "symmetric", "block", "estimator", "ridge_lambda")}
    q, _, _ = R.quantize(x, **opts)
    q = q.to(torch.int32)
    return q + 128 if a["bits"] == 8 and not a["symmetric"] else q


def _run_reference(
    ir: Any,
    inputs: Sequence[torch.Tensor],
    on_quantize: Callable[[int, torch.Tensor, dict[str, Any]], torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """The reference interpreter, with a hook that sees (and may replace) quantize inputs."""
    from rqcompile.targets.reference import KERNELS

    f = ir.main
    env: dict[int, torch.Tensor] = {v.id: x for v, x in zip(f.args, inputs, strict=False)}
    qi = 0
    for op in f.ops:
        if op.name == "rq.const":
            outs: Any = (ir.constant(str(op.attr("name"))),)
        else:
            args = tuple(env[v.id] for v in op.operands)
            if op.name == "rq.quantize":
                args = (on_quantize(qi, args[0], op.attrs_dict), *args[1:])
                qi += 1
            outs = KERNELS[op.name](args, op.attrs_dict)
            outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        env.update(zip((r.id for r in op.results), outs, strict=False))
    return tuple(env[v.id] for v in f.outputs)


def _first(x: Any) -> torch.Tensor:
    """The main output: a Hugging Face output's ``logits``, a tuple's first element."""
    if hasattr(x, "logits"):
        return x.logits  # type: ignore[no-any-return]
    return x[0] if isinstance(x, (tuple, list)) else x


def check_parity(
    qat: Any,
    exe: Any,
    inputs: Any,
    *,
    float_tol: float = 1e-5,
    tie_tol: float = 1e-4,
    target_tie_tol: float = 1e-3,
    max_refeeds: int = 16,
) -> ParityReport:
    """Compare a lowered model with its QAT model code by code (see the module docstring).

    Args:
        qat: the prepared (trained) graph from ``rq.prepare``.
        exe: ``rq.lower(qat, ...)`` / ``rq.build(rq.convert(qat), ...)`` / ``rq.load(...)``.
        inputs: a tensor or tuple of tensors, as for ``exe``.
        float_tol: agreement required once no code differs, relative to ``max |QAT|``.
        tie_tol: how close to a rounding tie a flipped code must be.
        target_tie_tol: how close to a tie the reference codes tried to explain a built
            model's difference may be (step 5 of the module docstring).

    Returns:
        A :class:`ParityReport`; ``report.ok`` is False only for ``"real mismatch"``.

    Example:
        >>> import torch, rqcompile as rq
        >>> x = torch.randn(4, 32)
        >>> qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(32, 8)), (x,), "A4W4")
        >>> rq.check_parity(qat, rq.lower(qat, "reference"), x).verdict
        'exact'
    """
    from rqcompile.errors import UsageError
    from rqcompile.quant.modules import RQQuantize

    xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not all(isinstance(x, torch.Tensor) for x in xs):
        raise UsageError("check_parity(qat, exe, inputs): inputs must be tensors.")
    if not hasattr(exe, "ir"):
        raise UsageError(
            f"check_parity(qat, exe, inputs): exe must be a compiled model, got {type(exe).__name__}."
        )
    seen: list[tuple[Any, torch.Tensor]] = []
    raw: list[torch.Tensor] = []

    def hook(mod: Any, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if mod.role == "activation":
            raw.append(inp[0].detach().clone())
            seen.append((mod, mod.k_last(raw[-1])))

    quants = [q for q in qat.modules() if isinstance(q, RQQuantize)]
    handles = [q.register_forward_hook(hook) for q in quants]
    try:
        with torch.no_grad():
            want = _first(qat(*xs)).detach().double()
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        got = _first(exe(*xs)).detach().double()
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
    tol = float_tol * scale
    report = ParityReport("exact", float((got - want).abs().max()), scale)

    ir = exe.ir_for(xs) if hasattr(exe, "ir_for") else exe.ir  # dynamic: this call's shapes
    fed: dict[int, torch.Tensor] = {}
    ref_first: torch.Tensor | None = None
    caught_first: list[tuple[torch.Tensor, dict[str, Any]]] = []
    for _ in range(max_refeeds + 1):
        caught: list[tuple[torch.Tensor, dict[str, Any]]] = []

        def on_q(i: int, x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
            x = fed.get(i, x)
            caught.append((x, a))
            return x

        with torch.no_grad():
            ref = _run_reference(ir, xs, on_q)[0].double()
        if ref_first is None:
            ref_first, caught_first = ref, list(caught)
        if len(caught) != len(seen):
            report.notes.append(
                f"{len(seen)} QAT activation quantizers vs {len(caught)} rq.quantize ops: "
                "codes not compared"
            )
            break
        flip = None
        for i, ((mod, xq), (xr, a)) in enumerate(zip(seen, caught, strict=True)):
            if i in fed or xq.numel() != xr.numel():
                continue
            k = xr.shape[-1]
            cq = mod.quantize(raw[i])[0].reshape(-1, k).to(torch.int32)
            cr = _ref_codes(xr, a).reshape(-1, k)
            if cq.shape != cr.shape or torch.equal(cq, cr):
                continue
            mask = cq != cr
            flip = Flip(i, str(mod.layer), int(mask.sum()), mask.numel(),
                        _tie_distance(mod, xq, mask))  # fmt: skip
            fed[i] = xq.reshape(xr.shape).to(xr.dtype)
            break
        if flip is None:
            report.refed_diff = float((ref - want).abs().max())
            break
        report.flips.append(flip)
        if not flip.tie_distance < tie_tol:
            report.verdict, report.reason = "real mismatch", (
                f"codes of {flip.layer} differ {flip.tie_distance:.2e} from the nearest tie, "
                f"not a rounding near-tie (< {tie_tol:.0e})"
            )
            break
    else:
        report.notes.append(f"stopped after {max_refeeds} re-feeds")

    if report.verdict != "real mismatch":
        if report.refed_diff is not None and report.refed_diff > tol:
            report.verdict, report.reason = "real mismatch", (
                f"with identical codes the reference still differs from QAT by "
                f"{report.refed_diff:.2e} (> {tol:.1e})"
            )
        elif report.flips:
            report.verdict = "ties only"
    assert ref_first is not None
    report.target_diff = float((got - ref_first).abs().max())
    if report.verdict != "real mismatch" and report.target_diff > tol:
        explained = _explain_by_ties(ir, xs, got, caught_first, tol, target_tie_tol)
        if not explained and fed:  # the build may round QAT's near-ties as QAT does
            explained = _explain_by_ties(ir, xs, got, caught, tol, target_tie_tol, fed=fed)
        if explained:
            report.verdict = "ties only"
            report.notes.append(
                f"the {exe.target.kind} build differs from the reference run of the same IR by "
                f"{report.target_diff:.2e}; {explained}"
            )
        else:
            report.verdict, report.reason = "real mismatch", (
                f"the {exe.target.kind} build differs from the reference run of the same IR "
                f"by {report.target_diff:.2e}, and flipping the reference's near-tie codes "
                "does not reproduce it"
            )
    return report


def _near_ties(
    caught: list[tuple[torch.Tensor, dict[str, Any]]], tol: float, limit: int
) -> list[tuple[float, int, int, float]]:
    """``(distance, quantizer, flat index, nudged value)`` of the reference's quantize inputs
    nearest a rounding tie (sign codes: z = 0; ternary: |z| = 1/2; 2-8 bits and the {0, 1}
    codes of the 1-bit min/max grid: half-integers), nearest first; the nudged value rounds
    the other way. The grid is the deployed quantizer's (``MINMAX_RUNTIMES``; gdnsq's 1-bit
    grid is the {0, 1} min/max one)."""
    from rqcompile.quant.estimators import MINMAX_RUNTIMES
    from rqcompile.quant.primitives import QFormat, grid

    out: list[tuple[float, int, int, float]] = []
    for qi, (x, a) in enumerate(caught):
        bits, est = a["bits"], str(a.get("estimator"))
        if not x.numel():
            continue
        _, grid_name = MINMAX_RUNTIMES.get(est, (est, None))
        fmt = QFormat(bits, a["symmetric"], "minmax" if est == "gdnsq" else grid_name)
        k = x.shape[-1]
        block = a["block"] if a["block"] and k % a["block"] == 0 else k
        try:
            xb = x.reshape(-1, k // block, block).float()
            s_f, b_f = grid(xb, fmt)
            z = (xb - b_f) / s_f
        except Exception:  # noqa: BLE001 - a layout this estimate does not model
            continue
        if bits == 1 and not fmt.zero_one:  # sign codes: the tie is z = 0
            d = z.abs().reshape(-1)
        elif bits == 1.5:  # ternary: the ties are |z| = 1/2
            d = (z.abs() - 0.5).abs().reshape(-1)
        else:
            frac = z - z.floor()
            d = (frac - 0.5).abs().reshape(-1)
        idx = torch.nonzero(d < tol).reshape(-1)[: 4 * limit]
        zf, sf, bf = z.reshape(-1), s_f.expand_as(xb).reshape(-1), b_f.expand_as(xb).reshape(-1)
        for j in idx.tolist():
            zj = float(zf[j])
            if bits == 1 and not fmt.zero_one:
                # just across zero (moving one element moves the block mean by 1/B of the
                # step: the code still flips)
                target = -1e-3 if zj >= 0 else 1e-3
            elif bits == 1.5:
                target = math.copysign(0.5 + (-1e-3 if abs(zj) >= 0.5 else 1e-3), zj)
            else:
                side = 1e-3 if zj - math.floor(zj) < 0.5 else -1e-3
                target = math.floor(zj) + 0.5 + side
            out.append((float(d[j]), qi, j, float(bf[j] + sf[j] * target)))
    out.sort()
    return out[:limit]


def _explain_by_ties(
    ir: Any,
    xs: Sequence[torch.Tensor],
    got: torch.Tensor,
    caught: list[tuple[torch.Tensor, dict[str, Any]]],
    tol: float,
    tie_tol: float,
    limit: int = 8,
    fed: dict[int, torch.Tensor] | None = None,
) -> str:
    """How flipping near-tie codes of the reference reproduces ``got``, or ``""``: one of
    the ``limit`` nearest, or all of them together. ``fed``:
    QAT's inputs of the quantizers whose codes differed from QAT's (``check_parity``'s
    re-feeds), given to the reference first: a build that rounds those ties as QAT does
    and crosses another one itself is then one flip away."""
    cands = _near_ties(caught, tie_tol, limit)
    fed = fed or {}
    prefix = "with QAT's codes re-fed, " if fed else ""

    def run(chosen: list[tuple[float, int, int, float]]) -> float:
        by_q: dict[int, list[tuple[int, float]]] = {}
        for _, qi, j, v in chosen:
            by_q.setdefault(qi, []).append((j, v))

        def on_q(i: int, x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
            x = fed.get(i, x)
            if i not in by_q:
                return x
            x = x.clone()
            flat = x.view(-1)
            for j, v in by_q[i]:
                flat[j] = v
            return x

        with torch.no_grad():
            r = _run_reference(ir, xs, on_q)[0].double()
        return float((got - r).abs().max())

    if fed and run([]) <= tol:
        return "the reference with QAT's codes re-fed reproduces it"
    for c in cands:
        if run([c]) <= tol:
            return (
                f"{prefix}flipping one reference code {c[0]:.1e} from a rounding tie "
                f"(quantizer {c[1]}) reproduces it"
            )
    if len(cands) > 1 and run(cands) <= tol:
        return f"{prefix}flipping the reference's {len(cands)} nearest-tie codes reproduces it"
    return ""


