"""Import -> fine-tune: a torch network (convs, BatchNorm, attention, an embedding, LayerNorm)
exported by torch.onnx, imported with gd.import_onnx and trained with model.fit, matches torch
training the same network on the same batches (float64)."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

import graphdl as gd

torch = pytest.importorskip("torch")
nn = torch.nn


class _Net(nn.Module):
    def __init__(self, c=8, tokens=16, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 2, stride=2)
        self.pos = nn.Embedding(tokens, c)
        self.ln = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.head = nn.Linear(c, classes)
        self.register_buffer("idx", torch.arange(tokens))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = self.conv2(h).flatten(2).transpose(1, 2)  # (N, tokens, c)
        h = self.ln(h + self.pos(self.idx))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def _export(net, x) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], output_names=["logits"],
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def test_imported_torch_network_fine_tunes_like_torch():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch, steps = 8, 20
    X = rng.standard_normal((batch * steps, 3, 8, 8))
    y = rng.integers(0, 5, batch * steps)
    net = _Net().double().train()
    proto = _export(net, torch.from_numpy(X[:batch]))

    model = gd.import_onnx(proto)
    assert len(model.trainable_variables) == len(list(net.parameters()))
    assert {v.name for v in model.state_variables} >= {"bn.running_mean", "bn.running_var"}
    model.compile(optimizer=gd.optim.SGD(0.05, momentum=0.9), loss="cross_entropy")
    hist = model.fit(X, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)

    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for i in range(steps):
        xb = torch.from_numpy(X[i * batch:(i + 1) * batch])
        yb = torch.from_numpy(y[i * batch:(i + 1) * batch])
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(hist.history["loss"][0] - np.mean(losses)) < 1e-4

    net.eval()
    with torch.no_grad():
        want = nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    got = model.evaluate(X, y, verbose=0)
    got = got["loss"] if isinstance(got, dict) else got
    assert abs(float(got) - want.item()) < 1e-4
    # the running statistics were updated as torch updated them
    var = {v.name: v.value for v in model.variables}
    np.testing.assert_allclose(var["bn.running_mean"], net.bn.running_mean.numpy(), atol=1e-9)
