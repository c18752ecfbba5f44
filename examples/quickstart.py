"""Quick start: prepare a model for A1W1 ridge QAT, train a few steps, inspect it.

Run: python examples/quickstart.py
"""

import torch
import torch.nn.functional as F

import rqcompile as rq
from rqcompile.testing.models import TinyMLP

torch.manual_seed(0)
model = TinyMLP()
x = torch.randn(256, 64)
y = (x[:, :10] > 0).long().argmax(dim=1)  # a learnable toy labelling

qat = rq.prepare(model, (x[:8],), "A1W1", overrides={"head": None})  # keep the classifier float
opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
for step in range(200):
    loss = F.cross_entropy(qat(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0 or step == 199:
        print(f"step {step:3d}  loss {loss.item():.3f}")

print(rq.inspect(qat))
