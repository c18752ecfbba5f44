"""Serve a quantized char transformer on ragged batches: dynamic batch and sequence.

Trains the tiny demo transformer for a few steps (random tokens: the point is the serving
path, not the model), lowers it once with ``dynamic=True``, saves and reloads the artifact,
then answers requests of varying batch size and length. Each new shape is built on its
first request (batches share power-of-two builds); later requests reuse the build.

    python examples/serve_dynamic.py                      # llvm (TVM) kernels
    python examples/serve_dynamic.py --target reference   # pure torch, no build time
    python examples/serve_dynamic.py --one-build          # one llvm build for every shape
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

import rqcompile as rq
from rqcompile.demo.models import CharTransformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="llvm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one-build", action="store_true",
                    help="build once for every shape (specialize='none') instead of per shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    vocab, context = 65, 16
    model = CharTransformer(vocab, n_layer=1, n_embd=32, block_size=context)
    qat = rq.prepare(model, (torch.zeros(8, context, dtype=torch.long),), "A4W4")
    opt = torch.optim.AdamW(qat.parameters(), lr=3e-3)
    for _ in range(args.steps):
        x = torch.randint(0, vocab, (8, context))
        loss = F.cross_entropy(qat(x).flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    qat.eval()

    mode = "none" if args.one_build else "lru"
    exe = rq.lower(qat, args.target, dynamic=True, specialize=mode)  # batch 1..64, seq 1..16
    path = os.path.join(tempfile.mkdtemp(), "served.rq")
    exe.save(path)  # the symbolic IR (and the one build's kernels, with --one-build)
    server = rq.load(path)
    print(rq.inspect(server).splitlines()[1])  # dynamic dims: batch in [1, 64] ...

    for b, t in [(3, 8), (4, 8), (1, 16), (2, 5)]:  # (4, 8) reuses the build of (3, 8)
        x = torch.randint(0, vocab, (b, t))
        t0 = time.perf_counter()
        y = server(x)
        ms = (time.perf_counter() - t0) * 1e3
        parity = rq.check_parity(qat, server, x)  # tie-aware: near-tie code flips explained
        print(f"request batch={b} seq={t}: {ms:8.1f} ms, {parity.line()}")
        assert parity.ok and y.shape == (b, t, vocab)
    try:
        server(torch.zeros(2, context + 1, dtype=torch.long))
    except rq.InputError as e:
        print(f"too long: {e}")
    print("shapes built:", server.cached_shapes)


if __name__ == "__main__":
    main()
