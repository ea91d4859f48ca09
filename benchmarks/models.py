"""The two reference models every serving and engine benchmark uses, built reproducibly from a fixed seed.

    python benchmarks/models.py [OUTDIR]      # default .cache/bench_models/

Both are scikit-learn classifiers trained on ``make_classification(n_samples=10000, n_features=32,
random_state=0)`` and exported to ONNX (opset 17, no ZipMap) with one signature:
input ``input`` FP32 [-1, 32] -> outputs ``label`` INT64 [-1] and ``probabilities`` FP32 [-1, 2].

- ``mlp.onnx``: MLPClassifier with two hidden layers of 64 (32 -> 64 -> 64 -> 2): a model whose
  inference costs a few microseconds, so serving overhead dominates;
- ``gbt.onnx``: GradientBoostingClassifier, 100 trees of depth 3 (binary: 100 regression trees): a tree
  ensemble, the other common tabular shape.

Built once and cached; the GBT takes the longest (tens of seconds on 2 cores). A ``models.json`` next to
the files records the recipe, so a change to it rebuilds them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / "bench_models"
NAMES = ("mlp", "gbt")
N_FEATURES = 32
RECIPE = {
    "data": {"n_samples": 10_000, "n_features": N_FEATURES, "random_state": 0},
    "mlp": {"hidden_layer_sizes": [64, 64], "max_iter": 300, "random_state": 0},
    "gbt": {"n_estimators": 100, "max_depth": 3, "random_state": 0},
    "onnx": {"target_opset": 17, "zipmap": False, "input": "input"},
}


def _train(name: str, x, y):
    if name == "mlp":
        from sklearn.neural_network import MLPClassifier

        p = RECIPE["mlp"]
        return MLPClassifier(
            hidden_layer_sizes=tuple(p["hidden_layer_sizes"]), max_iter=p["max_iter"], random_state=p["random_state"]
        ).fit(x, y)
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(**RECIPE["gbt"]).fit(x, y)


def build(out_dir: Path = DEFAULT_DIR) -> dict[str, Path]:
    """Train both models, export them to ONNX under ``out_dir`` and check the export against scikit-learn.

    Returns:
        Model name -> path of its ``.onnx`` file.

    Raises:
        RuntimeError: an exported model's probabilities differ from scikit-learn's by more than 1e-4.
    """
    import numpy as np
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from threadpoolctl import threadpool_limits

    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = make_classification(**RECIPE["data"])
    x = x.astype(np.float32)
    paths: dict[str, Path] = {}
    for name in NAMES:
        t0 = time.perf_counter()
        # One BLAS thread: the MLP's small matrix products gain nothing from more, and on a busy machine
        # spinning BLAS threads made training take many times longer.
        with threadpool_limits(1):
            model = _train(name, x, y)
        onx = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
            target_opset=RECIPE["onnx"]["target_opset"],
            options={id(model): {"zipmap": False}},
        )
        path = out_dir / f"{name}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        tmp.write_bytes(onx.SerializeToString())
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        _, proba = session.run(None, {"input": x[:64]})
        err = float(np.abs(proba - model.predict_proba(x[:64])).max())
        if err > 1e-4:
            raise RuntimeError(f"{name}: ONNX probabilities differ from scikit-learn by {err:.2e}")
        tmp.replace(path)  # only a checked model lands under its final name
        paths[name] = path
        print(
            f"built {path} ({path.stat().st_size:,} bytes, train accuracy {model.score(x, y):.4f}, "
            f"max |onnx - sklearn| {err:.1e}, {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    (out_dir / "models.json").write_text(json.dumps(RECIPE, indent=2, sort_keys=True) + "\n")
    return paths


def ensure(out_dir: Path = DEFAULT_DIR) -> dict[str, Path]:
    """The cached models under ``out_dir``, built first when missing or made from another recipe."""
    paths = {name: out_dir / f"{name}.onnx" for name in NAMES}
    recipe_file = out_dir / "models.json"
    try:
        same = json.loads(recipe_file.read_text()) == json.loads(json.dumps(RECIPE))
    except (OSError, ValueError):
        same = False
    if same and all(p.is_file() for p in paths.values()):
        return paths
    return build(out_dir)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    for n, p in build(target).items():
        print(f"{n}: {p}")
