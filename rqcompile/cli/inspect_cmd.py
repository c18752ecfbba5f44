"""``rqcompile inspect``: the rewritten graph and per-layer table of a model, checkpoint or
artifact (artifacts are read, never executed)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rqcompile.cli.common import Output, add_model_options, load_model_from_args, wrap

__all__ = ["register"]


def register(sub: Any) -> argparse.ArgumentParser:
    from rqcompile.checkpoint import builders

    names = "\n".join(f"  {k:<17} {b.summary}" for k, b in sorted(builders().items()))
    p = sub.add_parser(
        "inspect",
        help="show the graph and per-layer table of a model, QAT checkpoint or artifact",
        description=wrap(
            "Print what rqcompile did to a model: the rewritten graph with quantization "
            "notes and a per-layer table (bytes, bits/element, MACs, energy), or an artifact's "
            "target, kernels and weight bytes."
        ),
        epilog=f"model names:\n{names}\n\nexamples:\n  rqcompile inspect model.rq --ir\n"
        "  rqcompile inspect ckpt.safetensors --explain\n"
        "  rqcompile inspect digits-cnn --preset A4W4 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ir", action="store_true", help="also print the integer IR")
    p.add_argument("--explain", action="store_true", help="also print which rule chose each format")
    add_model_options(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    import rqcompile as rq

    kind, obj = load_model_from_args(args)
    parts = [rq.inspect(obj)]
    if kind == "artifact":
        data: dict[str, Any] = {"kind": kind, **artifact_json(obj)}
        ir = obj.ir
    else:
        data = {"kind": kind, **qat_json(obj)}
        if args.explain:
            parts.append(rq.explain(obj))
        ir = rq.convert(obj) if args.ir else None
    if args.ir and ir is not None:
        text = rq.inspect(ir)
        parts.append(text)
        data["ir"] = text
    out.result("\n\n".join(parts), data)
    return 0


def artifact_json(exe: Any) -> dict[str, Any]:
    from rqcompile.debug.summary import kernel_rows

    return {
        "target": str(exe.target),
        "inputs": [str(t) for t in exe.signature],
        "features": list(exe.features),
        "kernels": kernel_rows(exe.ir),
    }


def qat_json(qat: Any) -> dict[str, Any]:
    from rqcompile.debug.costs import matmul_costs

    rows = []
    for r in matmul_costs(qat):
        d = dataclasses.asdict(r)
        d["format"] = "float" if r.spec is None else (r.spec.preset or "custom")
        d["spec"] = None if r.spec is None else r.spec.short()
        d["bytes_fp32"], d["bytes_deployed"] = r.bytes_fp32, r.bytes_deployed
        rows.append(d)
    return {
        "config": json.loads(qat.meta["rq_config"].to_json()),
        "layers": rows,
        "float_layers": dict(qat.meta.get("rq_float_layers", {})),
    }
