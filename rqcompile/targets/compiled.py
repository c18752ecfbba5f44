"""``CompiledModule``: a built model, callable on torch tensors, savable, loadable.

Artifact format (one file, a zip archive written atomically):

* ``manifest.json``: format version, rqcompile version, target, input/output signature, the
  CPU features the kernels were built for, and the SHA-256 of every other member;
* ``ir.mlir``: the integer IR text (constants elided; they live in ``weights``);
* ``weights.safetensors``: every IR constant;
* ``kernels.so``: the TVM-built shared library (CPU TVM targets only);
* device targets (``opencl``, ``cuda``, ``metal``): ``device_plan.json`` (the launch plan of
  ``targets/tvm/device/launcher.py``), the kernel source (``kernels.cl`` / ``kernels.cu`` /
  ``kernels.metal``) and, for CUDA, ``kernels.fatbin``.

Loading never unpickles: JSON, safetensors and IR text are data. A TVM artifact does load a
shared library, which is native code: ``rq.load(path, trust_kernels=False)`` rebuilds the
kernels from the IR instead, for artifacts from sources you do not trust.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rqcompile.errors import ArtifactError, InputError, TargetError, UsageError
from rqcompile.ir.core import Module
from rqcompile.ir.types import TensorType, torch_dtype
from rqcompile.targets.target import Target

__all__ = ["FORMAT", "CompiledModule", "load", "read_artifact"]

FORMAT = 1
Runner = Callable[..., tuple[torch.Tensor, ...]]


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in ``x``: its min and max (NaN propagates to both), which runs on every
    call. On CPU through numpy: torch's reductions run on its OpenMP threads above ~32k
    elements, and those threads then spin for a while after the op, on the cores our own
    kernels are about to use (``targets/tvm/parallel.py``; the thread-scaling section of
    ``benchmarks/README.md``). numpy's are single-threaded, and faster than
    ``torch.aminmax`` on one thread."""
    if not x.numel():
        return True
    if x.device.type == "cpu" and x.dtype in _NUMPY_FLOATS:
        a = x.detach().numpy()
        return math.isfinite(float(a.min())) and math.isfinite(float(a.max()))
    lo, hi = torch.aminmax(x)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
#: :func:`finite_array` checks arrays this small with one numpy call (a sum: at batch 1 each
#: call costs more than the data), larger ones with min and max (numpy's vectorized min/max
#: passes take ~12 µs each on 256 x 1024 floats, its pairwise sum ~45)
_SUM_BELOW = 1 << 16
#: float32 arrays this large (2 MiB: past L2 on the project's machines) are checked in one
#: pass (``einsum``): measured 1M floats 378 µs with min and max, 210 with the one pass;
#: 256k floats (in cache) 31 vs 47
_ONE_PASS_FROM = 1 << 19


def finite_array(a: Any) -> bool:
    """Whether a numpy float array is certainly free of NaN/Inf: its sum is finite (below
    :data:`_SUM_BELOW` elements), its min and max are (up to :data:`_ONE_PASS_FROM`, or
    not float32), or its sum of squares is (float32 from :data:`_ONE_PASS_FROM`).
    ``False`` also where a sum of finite values overflows: the caller then runs the full
    check, which decides."""
    if a.size >= _ONE_PASS_FROM and a.dtype == np.float32 and a.flags.c_contiguous:
        # beyond L2 one pass beats two (min, max): Σ a², inf/NaN wherever a value is, and
        # also where a finite |a| > ~1e19 overflows it (then the full check decides)
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            return math.isfinite(float(np.einsum("i,i->", flat, flat)))
    if a.size >= _SUM_BELOW:
        return math.isfinite(float(a.min())) and math.isfinite(float(a.max()))
    if not a.size:
        return True
    if a.dtype.itemsize < 8:  # summed in float64: no overflow below 2^16 elements, no warning
        return math.isfinite(float(a.sum(dtype=np.float64)))
    with np.errstate(over="ignore"):  # finite float64 values can overflow their sum
        return math.isfinite(float(a.sum()))


class CompiledModule:
    """A model built for one target. Call it like the original model (positional tensors)."""

    def __init__(
        self,
        ir: Module,
        target: Target,
        runner: Runner,
        *,
        library: bytes | None = None,
        features: Sequence[str] = (),
        backend: Any = None,
        members: Mapping[str, bytes] | None = None,
        generation: tuple[Runner, Runner] | None = None,
        func_libraries: Mapping[str, bytes] | None = None,
    ) -> None:
        self.ir = ir
        self.target = target
        self._runner = runner
        self._library = library
        self._members = dict(members or {})  # extra artifact members (device targets)
        self.features = tuple(features)
        self.backend = backend  # e.g. the TVM VM / module, for power users
        #: ``(prefill, decode)`` runners of the kv-cache functions (``generate=True``)
        self._generation = generation
        self._func_libraries = dict(func_libraries or {})  # name -> library (TVM targets)

    @functools.cached_property
    def _kv(self) -> Any:
        from rqcompile.targets.generate import KVGenerator

        if self._generation is None:
            raise UsageError(
                "this model was built without generation support: its IR has no prefill/decode "
                "functions. Lower it with rq.lower(qat, target, generate=True) (or run the "
                "'kv-cache' pass on the IR before rq.build)."
            )
        return KVGenerator(self.ir, *self._generation)

    @property
    def can_generate(self) -> bool:
        """Whether :meth:`generate` works (the model was lowered with ``generate=True``)."""
        return self._generation is not None

    @property
    def max_length(self) -> int:
        """Longest context ``generate`` handles: prompt + new tokens (the converted length)."""
        return int(self._kv.max_length)

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        *,
        lengths: Any = None,
        attention_mask: Any = None,
    ) -> torch.Tensor:
        """Generate ``max_new_tokens`` tokens after the prompt ``ids`` with a KV cache.

        Like Hugging Face ``generate``: greedy when ``temperature`` is 0, else sampling from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` largest (if given),
        drawn with a generator seeded by ``seed``. Returns the prompt followed by the new
        tokens, ``(B, L + max_new_tokens)``. One ``prefill`` call on the prompt, then one
        ``decode`` call per token (``rqcompile/targets/generate.py``).

        Ragged batches: ``lengths`` (``B`` ints), or ``attention_mask`` (``(B, L)``, 1 for a
        prompt token, 0 for padding at the end, as a tokenizer with ``padding_side="right"``
        returns): row ``b``'s prompt is ``ids[b, :lengths[b]]``. Each row decodes at its own
        position, so it gets exactly the tokens it would get alone; its new tokens follow its
        prompt, and the ``max(lengths) - lengths[b]`` places after them are 0.

        Raises:
            UsageError: the model was not lowered with ``generate=True``; bad options.
            InputError: ids of another batch than converted, or prompt + new tokens longer
                than the converted length (``exe.max_length``).
        """
        return self._kv.generate(
            ids, max_new_tokens, temperature, top_k, seed,
            lengths=lengths, attention_mask=attention_mask,
        )  # fmt: skip

    @property
    def threads(self) -> int | None:
        """Threads the TVM CPU kernels use per call; ``None`` (the default): follow
        ``torch.get_num_threads()`` at each call, i.e. all cores unless torch is told
        otherwise. Calls with little work run on one thread either way. Settable:
        ``exe.threads = 1``. Other targets ignore it."""
        return getattr(self._runner, "threads", None)

    @threads.setter
    def threads(self, n: int | None) -> None:
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"threads must be a positive int or None, not {n!r}")
        if hasattr(self._runner, "threads"):
            self._runner.threads = n

    @functools.cached_property
    def _id_ranges(self) -> dict[int, int]:
        """Input position -> vocabulary size, for inputs that index an embedding table.

        Cached: ``_check`` runs on every call, and walking a large model's ops each time
        cost more than a small layer's kernels."""
        f = self.ir.main
        args = {v.id: i for i, v in enumerate(f.args)}
        out: dict[int, int] = {}
        for op in f.ops:
            if op.name == "rq.embedding" and op.operands[0].id in args:
                vocab = op.operands[1].type.shape[0]
                if vocab is not None:
                    out[args[op.operands[0].id]] = int(vocab)
        return out

    @functools.cached_property
    def signature(self) -> tuple[TensorType, ...]:
        return tuple(v.type for v in self.ir.main.args)

    @functools.cached_property
    def _expect(self) -> tuple[tuple[torch.dtype, tuple[int | None, ...]], ...]:
        """``(dtype, shape)`` each input must have: ``_check`` runs on every call, and at
        batch 1 it cost as much as a small layer's kernels."""
        return tuple((torch_dtype(t.dtype), tuple(t.shape)) for t in self.signature)

    def _check(self, inputs: tuple[Any, ...]) -> None:
        sig = self.signature
        if len(inputs) != len(sig):
            raise InputError(
                f"compiled model takes {len(sig)} input(s) {', '.join(map(str, sig))}, "
                f"got {len(inputs)}."
            )
        for i, (x, t, (want, shape)) in enumerate(zip(inputs, sig, self._expect, strict=False)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i}: expected a torch.Tensor {t}, got {type(x).__name__}.")
            if x.layout != torch.strided or x.is_nested or getattr(x, "is_mkldnn", False):
                kind = "nested" if x.is_nested else str(x.layout).removeprefix("torch.")
                raise InputError(
                    f"input {i}: a {kind} tensor; compiled models take dense (strided) tensors. "
                    "Convert it first, e.g. x.to_dense()"
                    + (" or torch.nested.to_padded_tensor(x, 0)" if x.is_nested else "")
                    + "."
                )
            problems = []
            if x.dtype != want:
                problems.append(f"dtype {x.dtype} (expected {want}; convert with x.to({want}))")
            if x.shape != shape and (  # dynamic dims (None) match any size
                x.dim() != len(shape)
                or any(d is not None and d != s for d, s in zip(shape, x.shape, strict=False))
            ):
                problems.append(
                    f"shape {tuple(x.shape)} (expected {tuple('?' if d is None else d for d in t.shape)};"
                    " the model was converted for these shapes: call rq.lower(qat, "
                    "example_inputs=(x,)) to build for another shape)"
                )
            if not x.is_cpu and self.target.kind != "cuda":
                problems.append(
                    f"device {x.device} (this {self.target.kind} build runs on cpu; use x.cpu())"
                )
            if not problems and x.is_floating_point() and not _all_finite(x):
                bad = int((~torch.isfinite(x)).sum())
                problems.append(
                    f"{bad} NaN/Inf value(s) (a quantized block containing one has no valid "
                    "scale; clean the input first, e.g. torch.nan_to_num(x))"
                )
            vocab = self._id_ranges.get(i)
            if not problems and vocab is not None and x.numel():
                lo, hi = (int(v) for v in torch.aminmax(x))
                if lo < 0 or hi >= vocab:
                    problems.append(f"token ids must lie in [0, {vocab}), got [{lo}, {hi}]")
            if problems:
                raise InputError(f"input {i}: " + "; ".join(problems))
        if self._gathers:  # ids reaching an embedding through reshape/arithmetic
            self._gathers(inputs)

    @functools.cached_property
    def _gathers(self) -> Any:
        from rqcompile.targets.gather_check import GatherCheck

        return GatherCheck(self.ir.main, self.ir.constants)

    @functools.cached_property
    def _fast_call(self) -> Any:
        """The runner's one-function common call (``runtime._VMRunner.fast_call``), if any:
        it checks what :meth:`_fast_match` and the runner's finiteness check would, and
        returns ``None`` (nothing run) for anything else."""
        return getattr(self._runner, "fast_call", None)

    @functools.cached_property
    def _fast_expect(self) -> tuple[tuple[torch.dtype, torch.Size], ...] | None:
        """``(dtype, shape)`` of every input where :meth:`_fast_match` can stand for
        :meth:`_check`: float inputs of static shapes that feed no embedding; else ``None``."""
        if self._id_ranges or self._gathers or self.target.kind == "cuda":
            return None
        if not all(type(d) is int for _, s in self._expect for d in s):
            return None
        if not all(dt in _NUMPY_FLOATS for dt, _ in self._expect):
            return None
        return tuple((dt, torch.Size(s)) for dt, s in self._expect)

    def _fast_match(self, inputs: tuple[Any, ...]) -> bool:
        """The common call's structure, confirmed with as few library calls as possible:
        right count, plain CPU tensors of the converted dtype and shape. The values (no
        NaN/Inf) are checked by the runner on the arrays it passes to the kernels
        (``run_if_finite``), which costs less than a numpy view of a torch tensor.

        Why it matters: after a kernel that streams more weight bytes than L2 holds, each
        distinct torch/numpy/Python call of the next call's checks runs from cold caches and
        costs ~20 µs (a 4096 x 4096 A1W1 GEMV on the 2-core Xeon: 383 µs per call with the
        full checks, 317 with these; ``benchmarks/README.md``, per-call overhead); and even
        warm, ``x.detach().numpy()`` next to a kernel call cost ~7 µs of a 20 µs call (a
        64 x 64 layer). Anything unusual goes through :meth:`_check`, which names the
        problem."""
        expect = self._fast_expect
        if expect is None or len(inputs) != len(expect):
            return False
        for x, (dtype, shape) in zip(inputs, expect, strict=True):
            if (type(x) is not torch.Tensor or x.dtype is not dtype or x.shape != shape
                    or x.layout is not torch.strided or x.is_nested or not x.is_cpu):  # fmt: skip
                return False
        return True

    def __call__(self, *inputs: torch.Tensor) -> Any:
        expect = self._fast_expect
        if expect is not None and self._fast_call is not None:
            outs = self._fast_call(inputs, expect)  # the common call, or None: see below
            if outs is not None:
                return outs[0] if len(outs) == 1 else outs
        prewake = getattr(self._runner, "prewake", None)
        if prewake is None:
            self._check(inputs)
            outs = self._runner(*inputs)
        else:  # workers start waking while the inputs are checked
            threads = prewake(inputs)
            outs = None
            if self._fast_match(inputs):
                outs = self._runner.run_if_finite(inputs, threads)
            if outs is None:  # anything unusual: the full check names it, or lets it run
                self._check(inputs)
                outs = self._runner(*inputs, threads=threads)
        return outs[0] if len(outs) == 1 else outs

    def inspect_text(self) -> str:
        from rqcompile.debug.summary import compiled_summary

        return compiled_summary(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the artifact atomically (a temp file then rename; nothing half-written)."""
        from safetensors.torch import save as st_save

        from rqcompile.version import __version__
        from rqcompile.ir.printer import print_module

        members = {
            "ir.mlir": print_module(self.ir).encode(),
            "weights.safetensors": st_save(
                {k: v.contiguous() for k, v in self.ir.constants.items()}
            ),
        }
        if self._library is not None:  # bound to this IR + weights + options (binding.py)
            from rqcompile.targets.binding import bind, binding_digest

            digest = binding_digest(self.ir, self.target, self.features)
            members["kernels.so"] = bind(self._library, digest)
            for name, lib in self._func_libraries.items():  # kv-cache prefill / decode
                members[f"kernels.{name}.so"] = bind(lib, digest)
        members.update(self._members)
        manifest = {
            "format": FORMAT,
            "rqcompile": __version__,
            "target": self.target.to_dict(),
            "features": list(self.features),
            "inputs": [str(t) for t in self.signature],
            "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
        }
        from rqcompile.fileio import atomic_write

        def write(f: Any) -> None:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                # fixed member timestamps: the same model always saves to the same bytes
                z.writestr(_member("manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
                for k, v in members.items():
                    z.writestr(_member(k), v)

        atomic_write(path, write, what="the artifact")


def _member(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def read_artifact(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Module, dict[str, bytes]]:
    """Check and read an artifact without building or loading any code.

    Returns:
        ``(manifest, ir, members)``: the manifest dict, the IR with its constants, and the raw
        bytes of every checksummed member (``kernels.so`` included, never loaded here).

    Raises:
        ArtifactError: as :func:`load`.
    """
    from safetensors.torch import load as st_load

    from rqcompile.artifact_limits import check_archive
    from rqcompile.fileio import fspath, open_regular
    from rqcompile.ir.parser import parse_module

    path = fspath(path, what="artifact path")
    if not os.path.lexists(path):
        raise ArtifactError(f"{path}: no such artifact.")
    try:
        with open_regular(path, what="an rqcompile artifact") as fh, zipfile.ZipFile(fh) as z:
            if (problem := check_archive(z)) is not None:
                raise ArtifactError(
                    f"{path}: not a valid rqcompile artifact ({problem}). Only load files "
                    "written by exe.save(); re-save the model from its QAT graph."
                )
            names = set(z.namelist())
            if "manifest.json" not in names:
                raise ArtifactError(f"{path}: not an rqcompile artifact (no manifest.json).")
            manifest = json.loads(z.read("manifest.json"))
            if isinstance(manifest, dict) and manifest.get("format") != FORMAT:
                raise ArtifactError(
                    f"{path}: artifact format {manifest.get('format')!r:.40}, this rqcompile "
                    f"reads {FORMAT}. Re-export it with rqcompile "
                    f"{str(manifest.get('rqcompile', '?'))[:40]} or rebuild from the QAT model."
                )
            _check_manifest(path, manifest, names)
            members = {k: z.read(k) for k in manifest["sha256"]}
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        KeyError,
        ValueError,  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        RecursionError,
        NotImplementedError,  # zipfile: unsupported compression or encryption
        RuntimeError,
    ) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(
            f"{path}: corrupt or truncated artifact ({type(e).__name__}: {str(e)[:200]}). "
            "Re-save it with exe.save(path)."
        ) from e
    for k, digest in manifest["sha256"].items():
        if hashlib.sha256(members[k]).hexdigest() != digest:
            raise ArtifactError(
                f"{path}: member {k!r} does not match its checksum (corrupt or edited)."
            )
    try:
        constants = st_load(members["weights.safetensors"])
        ir = parse_module(members["ir.mlir"].decode("utf-8"), constants=constants)
    except Exception as e:  # noqa: BLE001 - any failure here means a damaged file
        raise ArtifactError(
            f"{path}: cannot read the IR or weights ({type(e).__name__}: {e}). The file is "
            "damaged or was not written by exe.save(); re-save the model from its QAT graph."
        ) from e
    try:
        Target.parse(manifest["target"])
    except TargetError as e:
        raise ArtifactError(
            f"{path}: built for target {manifest['target']!r}, which this rqcompile cannot "
            f"build ({e}). Load it with the rqcompile that wrote it ({manifest.get('rqcompile')})."
        ) from e
    return manifest, ir, members


_REQUIRED = ("ir.mlir", "weights.safetensors")


def _check_manifest(path: str, manifest: Any, names: set[str]) -> None:
    """Reject a manifest that is not one ``save`` writes, before anything else is read.

    Members not listed in the manifest (e.g. a planted pickle) are an error, not ignored: an
    artifact is exactly what ``save`` wrote.
    """
    problem = _manifest_schema_problem(manifest)
    if problem is None and (missing := [m for m in _REQUIRED if m not in manifest["sha256"]]):
        problem = f"manifest.json lists no {', '.join(missing)}"
    elif problem is None and (extra := sorted(names - set(manifest["sha256"]) - {"manifest.json"})):
        problem = f"unexpected member(s) {', '.join(map(repr, extra))} not listed in the manifest"
    elif problem is None and (absent := sorted(set(manifest["sha256"]) - names)):
        problem = f"member(s) {', '.join(map(repr, absent))} listed but missing"
    if problem is not None:
        raise ArtifactError(
            f"{path}: not a valid rqcompile artifact ({problem}). Only load files written by "
            "exe.save(); re-save the model from its QAT graph."
        )


#: manifest key -> (required, check, what it must be). ``save`` writes exactly these.
_SCHEMA: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "format": (True, lambda v: type(v) is int, "an integer"),
    "rqcompile": (False, lambda v: isinstance(v, str) and len(v) < 64, "a version string"),
    "target": (
        True,
        lambda v: (isinstance(v, dict) and isinstance(v.get("kind"), str))
        or (isinstance(v, str) and len(v) < 256),
        "a target object with a string 'kind'",
    ),
    "features": (
        False,
        lambda v: isinstance(v, list) and all(isinstance(f, str) and f.isascii() for f in v),
        "a list of CPU feature names (strings)",
    ),
    "inputs": (
        False,
        lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
        "a list of type strings",
    ),
    "sha256": (
        True,
        lambda v: isinstance(v, dict)
        and all(
            isinstance(d, str) and len(d) == 64 and all(c in "0123456789abcdef" for c in d)
            for d in v.values()
        ),
        "an object mapping member names to 64-digit hex SHA-256 digests",
    ),
}


def _manifest_schema_problem(manifest: Any) -> str | None:
    """The first field of ``manifest`` that is missing, unknown or of the wrong type."""
    if not isinstance(manifest, dict):
        return f"manifest.json holds a {type(manifest).__name__}, not an object"
    for key, (required, ok, want) in _SCHEMA.items():
        if key not in manifest:
            if required:
                return f"manifest.json lacks {key!r}"
            continue
        if not ok(manifest[key]):
            got = type(manifest[key]).__name__
            return f"manifest.json field {key!r} must be {want}, got a {got} {manifest[key]!r:.60}"
    if unknown := sorted(set(manifest) - set(_SCHEMA)):
        return f"manifest.json has unknown field(s) {', '.join(map(repr, unknown))}"
    return None
