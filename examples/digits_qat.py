"""A1W1 ridge QAT of a small CNN on sklearn's digits, then integer CPU kernels.

python examples/digits_qat.py --preset A1W1 --steps 600
"""

import argparse

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rqcompile as rq
from rqcompile.state_file import save_checkpoint
from rqcompile.demo.data import digits
from rqcompile.demo.models import DigitsCNN

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="A1W1")
ap.add_argument("--estimator", default="ridge", choices=["ridge", "ste"])
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--target", default="reference", help="'reference' or 'llvm' (needs apache-tvm)")
args = ap.parse_args()

torch.manual_seed(0)
xtr, ytr, xte, yte = digits()
# the first conv (1 input channel) and the classifier stay float, as the paper recommends
qat = rq.prepare(
    DigitsCNN(),
    (xtr[:64],),
    args.preset,
    estimator=args.estimator,
    overrides={"conv1": None, "fc": None},
)
opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
gen = torch.Generator().manual_seed(0)
for step in (bar := tqdm(range(args.steps), desc=f"{args.preset} {args.estimator}")):
    idx = torch.randint(0, len(xtr), (64,), generator=gen)
    loss = F.cross_entropy(qat(xtr[idx]), ytr[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    bar.set_postfix(loss=f"{loss.item():.3f}")

qat.eval()
with torch.no_grad():
    acc = (qat(xte).argmax(1) == yte).float().mean().item()
print(f"QAT test accuracy: {acc:.3f}")
save_checkpoint(qat, "digits_qat.safetensors", {"preset": args.preset, "acc": acc})

exe = rq.lower(qat, target=args.target, example_inputs=(xte,))  # static shapes: the test set
lowered = (exe(xte).argmax(1) == yte).float().mean().item()
print(f"lowered ({args.target}) test accuracy: {lowered:.3f}")
print(rq.inspect(exe))
