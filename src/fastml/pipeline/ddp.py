"""Distributed training of the PyTorch MLP with DistributedDataParallel, launched by torchrun.

``train_distributed`` writes the (already preprocessed) training matrix to a temporary directory, runs
``torchrun --standalone --nproc_per_node N -m fastml.pipeline.ddp DIR`` (gloo backend, so it runs on
CPUs), and reads back the state dict rank 0 saved. Every rank starts from the same seeded weights and
trains on its shard of each epoch; DDP averages gradients, so all ranks end with the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastml.errors import InternalError


def train_distributed(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_out: int,
    hidden_units: int,
    n_layers: int,
    nproc: int,
    timeout_s: float = 600.0,
    **hp,
) -> tuple[dict, dict]:
    """Train with ``nproc`` DDP processes; returns ``(state_dict, info)`` where ``info`` records each
    rank's row count and the world size."""
    import torch

    with tempfile.TemporaryDirectory(prefix="fastml-ddp-") as tmp:
        d = Path(tmp)
        np.save(d / "X.npy", np.ascontiguousarray(X, dtype=np.float32))
        np.save(d / "y.npy", y)
        (d / "params.json").write_text(
            json.dumps(dict(n_out=n_out, hidden_units=hidden_units, n_layers=n_layers, **hp))
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc_per_node={nproc}",
            "-m",
            "fastml.pipeline.ddp",
            str(d),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        rank_files = [d / f"rank_{r}.json" for r in range(nproc)]
        finished = (d / "state.pt").exists() and all(f.exists() for f in rank_files)
        if not finished:
            raise InternalError(
                f"torchrun DDP training failed (exit {proc.returncode}): {proc.stderr[:1500]} ... {proc.stderr[-1500:]}"
            )
        # Every rank wrote its file and rank 0 saved the weights after training, so a non-zero exit here
        # can only come from process-group teardown; it is recorded, not fatal.
        state = torch.load(d / "state.pt", weights_only=True)
        ranks = [json.loads(f.read_text()) for f in rank_files]
        return state, {"world_size": nproc, "backend": "gloo", "ranks": ranks, "torchrun_exit_code": proc.returncode}


def _worker(workdir: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fastml.pipeline.torch_mlp import build_network, train_loop

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    p = json.loads((workdir / "params.json").read_text())
    X, y = np.load(workdir / "X.npy"), np.load(workdir / "y.npy")
    net = build_network(X.shape[1], p["n_out"], p["hidden_units"], p["n_layers"], p["seed"])
    model = DistributedDataParallel(net)
    seen = train_loop(
        model,
        X,
        y,
        task=p["task"],
        lr=p["lr"],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        weight_decay=p["weight_decay"],
        seed=p["seed"],
        rank=rank,
        world_size=world,
    )
    (workdir / f"rank_{rank}.json").write_text(json.dumps({"rank": rank, "rows_seen": seen}))
    if rank == 0:
        torch.save(net.state_dict(), workdir / "state.pt.tmp")
        os.replace(workdir / "state.pt.tmp", workdir / "state.pt")
    # Nobody tears down while a peer still uses the group: one rank leaving early made the other's
    # gloo threads abort ("terminate called without an active exception") in about 1 run in 20.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
