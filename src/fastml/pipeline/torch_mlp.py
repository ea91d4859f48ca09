"""A PyTorch multi-layer perceptron with the scikit-learn estimator interface.

It sits as the last step of the pipeline's scikit-learn Pipeline, so tuning, cross-validation and
preprocessing treat it like any other model; ``fastml.convert`` exports it with ``torch.onnx``. With
``ddp_processes > 1`` the fit runs under torchrun with DistributedDataParallel (see ``ddp.py``).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin


def build_network(n_in: int, n_out: int, hidden_units: int, n_layers: int, seed: int):
    """The network; same arguments give the same initial weights."""
    import torch

    torch.manual_seed(seed)
    layers: list = []
    width = n_in
    for _ in range(n_layers):
        layers += [torch.nn.Linear(width, hidden_units), torch.nn.ReLU()]
        width = hidden_units
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def train_loop(
    module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Train ``module`` in place with Adam on mini-batches; returns the number of rows this rank saw.

    With ``world_size > 1`` each rank takes its own shard of every epoch's permutation (the same
    permutation on all ranks, as DistributedSampler does) and ``module`` is expected to be DDP-wrapped.
    """
    import torch

    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = (
        torch.from_numpy(y.astype(np.int64))
        if task == "classification"
        else torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
    )
    loss_fn = torch.nn.CrossEntropyLoss() if task == "classification" else torch.nn.MSELoss()
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(Xt)
    seen = 0
    module.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        if world_size > 1:
            # Pad so every rank runs the same number of steps (DDP all-reduces once per step).
            per_rank = -(-n // world_size)
            perm = torch.cat([perm, perm[: per_rank * world_size - n]])[rank::world_size]
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(module(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            seen += len(idx)
    module.eval()
    return seen


class _TorchMLP(BaseEstimator):
    _fastml_torch = True
    task = "classification"

    def __init__(
        self,
        hidden_units: int = 64,
        n_layers: int = 2,
        lr: float = 1e-2,
        epochs: int = 30,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        random_state: int = 0,
        ddp_processes: int = 1,
        n_threads: int = 1,
    ):
        self.hidden_units = hidden_units
        self.n_layers = n_layers
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.ddp_processes = ddp_processes
        self.n_threads = n_threads

    def _targets(self, y):
        raise NotImplementedError

    def fit(self, X, y):
        import torch

        # Small MLPs gain nothing from intra-op threads, and on a shared machine the thread pool's
        # spinning costs 10-20x; tuning parallelism comes from Optuna workers instead.
        torch.set_num_threads(int(self.n_threads))
        X = np.asarray(X, dtype=np.float32)
        y_enc, n_out = self._targets(np.asarray(y))
        self.n_features_in_ = X.shape[1]
        hp = dict(
            task=self.task,
            lr=float(self.lr),
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            weight_decay=float(self.weight_decay),
            seed=int(self.random_state),
        )
        self.module_ = build_network(
            X.shape[1], n_out, int(self.hidden_units), int(self.n_layers), int(self.random_state)
        )
        if int(self.ddp_processes) > 1:
            from fastml.pipeline.ddp import train_distributed

            state, self.ddp_info_ = train_distributed(
                X,
                y_enc,
                n_out=n_out,
                hidden_units=int(self.hidden_units),
                n_layers=int(self.n_layers),
                nproc=int(self.ddp_processes),
                **hp,
            )
            self.module_.load_state_dict(state)
            self.module_.eval()
        else:
            train_loop(self.module_, X, y_enc, **hp)
        return self

    def _forward(self, X):
        import torch

        with torch.no_grad():
            return self.module_(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).numpy()


class TorchMLPClassifier(ClassifierMixin, _TorchMLP):
    """MLP classifier: softmax over ``classes_``; exported with outputs ``label`` and ``probabilities``."""

    task = "classification"

    def _targets(self, y):
        self.classes_ = np.unique(y)
        return np.searchsorted(self.classes_, y), len(self.classes_)

    def predict_proba(self, X):
        import torch

        logits = torch.from_numpy(self._forward(X))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        return self.classes_[np.argmax(self._forward(X), axis=1)]


class TorchMLPRegressor(RegressorMixin, _TorchMLP):
    """MLP regressor with one output; exported with output ``variable`` [N, 1]."""

    task = "regression"

    def _targets(self, y):
        return y.astype(np.float32), 1

    def predict(self, X):
        return self._forward(X).reshape(-1)
