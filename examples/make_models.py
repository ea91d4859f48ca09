"""Write the two small ONNX models the guides use, trained on synthetic data (a few seconds).

    python examples/make_models.py [--out DIR]

Writes into DIR (default: the current directory):

- ``mlp.onnx`` (scikit-learn MLP, 2 hidden layers of 64) and ``gbt.onnx`` (gradient boosting, 20 trees):
  input ``input`` FP32 ``[-1, 32]``; outputs ``label`` INT64 ``[-1]`` and ``probabilities`` FP32 ``[-1, 2]``;
- ``models/mlp/1/model.onnx`` and ``models/gbt/1/model.onnx``: the same files as a model repository in
  Triton's layout, for ``fastml serve models/``;
- ``X.npy``: the 2,000 x 32 float32 training rows (``y.npy``: their labels).
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

N_FEATURES = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory to write into (default: .)")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    X, y = make_classification(n_samples=2000, n_features=N_FEATURES, random_state=0)
    X = X.astype(np.float32)
    estimators = {
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0),
        "gbt": GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0),
    }
    for name, est in estimators.items():
        with warnings.catch_warnings():
            # 50 epochs fit the training set (accuracy printed below); full convergence is not the point.
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        # zipmap=False: probabilities as a plain [-1, 2] tensor (a ZipMap's list of dicts is not a tensor).
        onx = convert_sklearn(
            est,
            initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
            target_opset=17,
            options={id(est): {"zipmap": False}},
        )
        path = out / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        version_dir = out / "models" / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, version_dir / "model.onnx")
        print(f"wrote {path} and {version_dir / 'model.onnx'} (train accuracy {est.score(X, y):.3f})")
    np.save(out / "X.npy", X)
    np.save(out / "y.npy", y)
    print(f"wrote {out / 'X.npy'} {X.shape} and {out / 'y.npy'}")


if __name__ == "__main__":
    main()
