"""How a table of features maps onto ONNX graph inputs."""

from __future__ import annotations

import dataclasses

import numpy as np

from fastml.errors import InvalidInput

# Derived-feature operations -> number of input columns (see fastml.convert.derived).
DERIVED_OPS = {"add": 2, "sub": 2, "mul": 2, "div": 2, "log1p": 1, "square": 1}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Columns the model reads, in order.

    With no categorical columns the graph has one input ``input`` FP32 [N, len(numeric)] (what the
    serving engine batches best). With categorical columns every column is its own input [N, 1]: FP32
    for numeric columns and STRING for categorical ones (skl2onnx's ColumnTransformer layout).
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...] = ()

    @property
    def layout(self) -> str:
        return "columns" if self.categorical else "matrix"

    @property
    def columns(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def to_dict(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical), "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(tuple(d["numeric"]), tuple(d.get("categorical", ())))

    def model_input(self, frame):
        """The object the scikit-learn pipeline is fitted on: a float32 matrix, or a DataFrame.

        Numeric values are cast to float32 here, on the Python side too, so that tree thresholds see
        exactly the values ONNX Runtime sees (a 1-ulp difference flips a split).
        """
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise InvalidInput(f"input table lacks columns {missing}")
        if self.layout == "matrix":
            # C order: pandas hands back a column-major block, and row slicing for CV folds is faster
            # on row-major data.
            return np.ascontiguousarray(frame[list(self.numeric)].to_numpy(dtype=np.float32, na_value=np.nan))
        import pandas as pd

        out = {c: frame[c].to_numpy(dtype=np.float32, na_value=np.nan) for c in self.numeric}
        for c in self.categorical:
            out[c] = frame[c].astype("object").where(frame[c].notna(), "").astype(str).to_numpy(dtype=object)
        return pd.DataFrame(out, columns=list(self.columns))


def onnx_feed(model_input, spec: InputSpec) -> dict[str, np.ndarray]:
    """ONNX Runtime feed for what :meth:`InputSpec.model_input` returned."""
    if spec.layout == "matrix":
        return {"input": np.ascontiguousarray(model_input, dtype=np.float32)}
    feed: dict[str, np.ndarray] = {}
    for c in spec.numeric:
        feed[c] = model_input[c].to_numpy(dtype=np.float32).reshape(-1, 1)
    for c in spec.categorical:
        feed[c] = model_input[c].to_numpy(dtype=object).astype(str).reshape(-1, 1)
    return feed
