"""Peer side of benchmarks/sysid.py: the Gaussian-readout baseline built from neuralpredictors.

Runs in the peer's own virtualenv (neuralpredictors 0.3.0 + torch), as a subprocess:

    python sysid_neuralpredictors_peer.py ARRAYS.npz CONFIG.json OUT.json

ARRAYS.npz holds the very arrays our loaders serve (``<tier>_<field>``); CONFIG.json the
architecture, batch size, epochs, learning rate and seed. The model is neuralpredictors'
``Stacked2dCore`` + ``FullGaussian2d`` with elu + 1 output; the training loop is the same
schedule as ours (Adam on the Poisson loss scaled by sqrt(n_train / batch) plus the
regularizers, validation correlation after every epoch, best epoch kept). It writes the
seconds per epoch, images per second and the test correlations.
"""

import collections
import collections.abc
import copy
import json
import math
import sys
import time
import types

import numpy as np
import torch

# neuralpredictors 0.3.0 imports collections.Iterable (removed in Python 3.10) ...
collections.Iterable = collections.abc.Iterable
# ... and torchvision, used only by its transfer-learning core (not used here)
sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))

from neuralpredictors.layers.cores import Stacked2dCore  # noqa: E402
from neuralpredictors.layers.readouts import FullGaussian2d  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self, core, readout):
        super().__init__()
        self.core = core
        self.readout = readout

    def forward(self, x):
        return torch.nn.functional.elu(self.readout(self.core(x))) + 1.0

    def regularizer(self):
        return self.core.regularizer() + self.readout.regularizer()


def pearson(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).mean(0) / (xc.std(0) * yc.std(0))
    return np.nan_to_num(r)


@torch.no_grad()
def predict(model, images, batch_size):
    model.eval()
    out = [model(torch.from_numpy(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    model.train()
    return np.concatenate(out)


def main(arrays_path, config_path, out_path):
    cfg = json.loads(open(config_path).read())
    torch.set_num_threads(cfg["threads"])
    data = dict(np.load(arrays_path))
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    train_x, train_y = data["train_images"], data["train_responses"]
    n_neurons = train_y.shape[1]
    core = Stacked2dCore(
        input_channels=train_x.shape[1],
        hidden_channels=cfg["hidden_channels"],
        input_kern=cfg["input_kernel"],
        hidden_kern=cfg["hidden_kernel"],
        layers=cfg["layers"],
        gamma_input=cfg["gamma_input"],
        gamma_hidden=0.0,
        pad_input=cfg["pad_input"],
        stack=-1,
        use_avg_reg=False,
        laplace_padding=None,
        input_regularizer="LaplaceL2norm",
    )
    with torch.no_grad():
        in_shape = core(torch.zeros(1, *train_x.shape[1:])).shape[1:]
    # bias starts at the mean response through elu + 1, as ours does
    mean = torch.from_numpy(train_y.mean(0)).clamp(min=1e-3)
    bias = torch.where(mean >= 1, mean - 1, torch.log(mean))
    readout = FullGaussian2d(
        in_shape,
        n_neurons,
        bias=True,
        init_mu_range=cfg["init_mu_range"],
        init_sigma=cfg["init_sigma"],
        gauss_type="full",
        feature_reg_weight=cfg["gamma_readout"],
        mean_activity=bias,
    )
    model = Model(core, readout)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    batch_size = cfg["batch_size"]
    scale = math.sqrt(len(train_x) / batch_size)
    generator = torch.Generator().manual_seed(cfg["seed"])
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    best, best_state, seconds = -np.inf, None, []
    for _ in range(cfg["epochs"]):
        started = time.perf_counter()
        order = torch.randperm(len(tx), generator=generator)
        for i in range(0, len(tx), batch_size):
            idx = order[i : i + batch_size]
            optimizer.zero_grad()
            pred = model(tx[idx])
            loss = scale * (pred - ty[idx] * torch.log(pred + 1e-12)).sum() + model.regularizer()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
        score = pearson(data["validation_responses"], predict(model, data["validation_images"], batch_size)).mean()
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    pred = predict(model, data["test_images"], batch_size)
    responses, ids = data["test_responses"], data["test_image_id"]
    unique, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse)[:, None]
    avg_r = np.zeros((len(unique), n_neurons))
    avg_p = np.zeros((len(unique), n_neurons))
    np.add.at(avg_r, inverse, responses)
    np.add.at(avg_p, inverse, pred)
    result = {
        "tool": "neuralpredictors 0.3.0",
        "torch": torch.__version__,
        "seconds_per_epoch": float(np.mean(seconds)),
        "images_per_second": float(len(tx) / np.mean(seconds)),
        "validation_correlation": float(best),
        "single_trial_correlation": float(pearson(responses, pred).mean()),
        "correlation_to_average": float(pearson(avg_r / counts, avg_p / counts).mean()),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:4])
