"""Explanations for ONNX models: SHAP (model-agnostic over ONNX Runtime, or TreeSHAP on the source tree
model), LIME for tabular rows, and global importance (mean |SHAP| per feature).

The model is run with ONNX Runtime directly (monitoring never imports the engine). Model-agnostic SHAP
uses shap's ``KernelExplainer`` over the ORT predictions with a background sample; with ``2**features``
samples (the default up to 12 features) it enumerates every coalition and the values are the exact
Shapley values of the independent-masking game, beyond that it samples coalitions (seeded). shap's
``Exact`` and ``Permutation`` explainers compute the same quantity but pay a numba compilation of 10-20 s
per process on this hardware, so they are not used.

With the source tree model at hand (``source_model=``), ``algorithm="tree"`` uses ``shap.TreeExplainer``
(interventional, same background). In margin space (``link="logit"`` for a classifier's probability:
the explained function is log(p / (1 - p)), the trees' raw output) TreeSHAP is exact and equals the
model-agnostic values; in probability space shap's TreeExplainer rescales margin attributions, which is
close to but not the same as the Shapley values of the probability. Tree values are checked for local
accuracy against the source model's explained output (after the link): a model whose raw tree output is not
that quantity (a random forest's raw output is the probability, not its logit) cannot be explained by
TreeSHAP, so ``auto`` falls back to the kernel explainer and ``tree`` refuses.

LIME fits its local linear model to the same explained output as SHAP (the chosen column, after the link).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastml.errors import InvalidInput


@dataclasses.dataclass
class ShapResult:
    """SHAP values of some rows.

    Attributes:
        values: (rows, features) contributions to the explained output.
        base_value: expected output over the background.
        feature_names: names of the features.
        algorithm: ``kernel`` or ``tree``.
        output: what was explained (e.g. ``probabilities[1]``).
    """

    values: np.ndarray
    base_value: float
    feature_names: list[str]
    algorithm: str
    output: str

    def global_importance(self) -> dict[str, float]:
        """Mean |SHAP| per feature, largest first."""
        imp = np.abs(self.values).mean(axis=0)
        order = np.argsort(-imp, kind="stable")
        return {self.feature_names[i]: float(imp[i]) for i in order}

    def to_dict(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "output": self.output,
            "base_value": self.base_value,
            "feature_names": self.feature_names,
            "values": self.values.tolist(),
            "global_importance": self.global_importance(),
        }


class OnnxExplainer:
    """Explain one output of an ONNX model.

    Args:
        model: path to the ``.onnx`` file, or its bytes.
        background: (rows, features) background sample (the masker's reference data).
        input_name: model input to feed (default: the only/first input).
        output: output to explain (default: the first floating-point output, e.g. ``probabilities``).
        class_index: column of a 2-D output to explain (default: the last, i.e. the positive class of a
            binary classifier).
        feature_names: names of the features (default ``f0``, ``f1``, ...).
        source_model: the fitted tree model the ONNX file came from, enabling ``algorithm="tree"``.
        max_background: background rows kept (a seeded sample when there are more).
        seed: seed for background sampling, kernel sampling and LIME.
        link: ``"identity"`` explains the output as is; ``"logit"`` explains log(p / (1 - p)) of a
            probability (the margin of a tree ensemble or logistic model).
    """

    def __init__(
        self,
        model: str | Path | bytes,
        background: Any,
        *,
        input_name: str | None = None,
        output: str | None = None,
        class_index: int | None = None,
        feature_names: Sequence[str] | None = None,
        source_model: Any = None,
        max_background: int = 100,
        seed: int = 0,
        link: str = "identity",
    ):
        import onnxruntime as ort

        if isinstance(model, bytes):  # an ONNX model already read (a registry artifact's checked bytes)
            source: str | bytes = model
        else:
            path = Path(model)
            if not path.is_file():
                from fastml.errors import NotFound

                raise NotFound(f"model file {path} does not exist")
            source = str(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # explanations run beside serving; stay off other cores
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        self.input_name = input_name or names[0]
        if self.input_name not in names:
            raise InvalidInput(f"model has no input {self.input_name!r}; inputs are {names}")
        input_type = inputs[names.index(self.input_name)].type
        if input_type not in _INPUT_DTYPES:
            raise InvalidInput(
                f"input {self.input_name!r} is {input_type}: explanations perturb feature values, which needs a "
                f"float or double input"
            )
        # Rows and background are fed in the input's own type: a model converted from float64 data takes
        # tensor(double), which ORT refuses as float32 (and float32 rounding would explain other rows).
        self.dtype = _INPUT_DTYPES[input_type]
        outs = {o.name: o for o in self.session.get_outputs()}
        if output is None:
            output = next((n for n, o in outs.items() if _is_float_tensor(o.type)), None)
            if output is None:
                raise InvalidInput(
                    f"model has no floating-point tensor output to explain; outputs are "
                    f"{ {n: o.type for n, o in outs.items()} } (a ZipMap output needs a model converted "
                    f"with zipmap=False)"
                )
        if output not in outs:
            raise InvalidInput(f"model has no output {output!r}; outputs are {list(outs)}")
        if not _is_float_tensor(outs[output].type):
            raise InvalidInput(f"output {output!r} is {outs[output].type}, not a floating-point tensor")
        self.output = output
        others = [i.name for i in inputs if i.name != self.input_name]
        if others:
            # ORT would refuse every run with a bare ValueError: explanations perturb one input's features, so the
            # model's other inputs (a feature-joined model's pass-through inputs) have no values to run with.
            raise InvalidInput(
                f"model has inputs {names}: explanations feed only {self.input_name!r} and cannot give the others "
                f"{others} values; export a model whose only input is the explained feature tensor"
            )
        if feature_names is not None:
            background = _by_name(background, list(feature_names), "background")
        bg = np.asarray(background, dtype=self.dtype)
        if bg.ndim != 2 or bg.shape[0] == 0:
            raise InvalidInput(f"background must be a non-empty 2-D array, got shape {bg.shape}")
        width = self.session.get_inputs()[names.index(self.input_name)].shape
        if len(width) == 2 and isinstance(width[1], int) and width[1] != bg.shape[1]:
            # ORT would refuse it on first use with its own exception type; say what is wrong here.
            raise InvalidInput(f"background has {bg.shape[1]} features but the model's input takes {width[1]}")
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        if bg.shape[0] > max_background:
            bg = bg[np.sort(self.rng.choice(bg.shape[0], max_background, replace=False))]
        self.background = bg
        self.n_features = bg.shape[1]
        self.feature_names = (
            list(feature_names) if feature_names is not None else [f"f{j}" for j in range(self.n_features)]
        )
        if len(self.feature_names) != self.n_features:
            raise InvalidInput(f"{len(self.feature_names)} feature names for {self.n_features} features")
        probe = self._run(bg[:1])
        if probe.ndim == 2:
            self.class_index = probe.shape[1] - 1 if class_index is None else class_index
            if not 0 <= self.class_index < probe.shape[1]:
                raise InvalidInput(f"class_index {self.class_index} out of range for output of width {probe.shape[1]}")
            self.output_label = f"{output}[{self.class_index}]"
        else:
            self.class_index = None
            self.output_label = output
        self.source_model = source_model
        if link not in ("identity", "logit"):
            raise InvalidInput(f"link must be 'identity' or 'logit', got {link!r}")
        self.link = link
        if link == "logit":
            self.output_label = f"logit({self.output_label})"

    # ----------------------------------------------------------------------------------- predictions
    def _run(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], {self.input_name: np.ascontiguousarray(X, dtype=self.dtype)})[0]
        return np.asarray(out)

    def predict(self, X: Any) -> np.ndarray:
        """The explained output for each row (1-D), after the link."""
        out = self._run(self._rows(X)).astype(np.float64)
        out = out[:, self.class_index] if self.class_index is not None else out.reshape(out.shape[0], -1)[:, 0]
        if self.link == "logit":
            p = np.clip(out, 1e-12, 1 - 1e-12)
            out = np.log(p / (1 - p))
        return out

    def predict_all(self, X: Any) -> np.ndarray:
        """The whole output (2-D), as LIME's classifier mode wants."""
        out = self._run(self._rows(X)).astype(np.float64)
        return out if out.ndim == 2 else out.reshape(-1, 1)

    def _rows(self, X: Any) -> np.ndarray:
        X = np.asarray(_by_name(X, self.feature_names, "rows"), dtype=self.dtype)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InvalidInput(f"rows must have shape (n, {self.n_features}), got {X.shape}")
        return X

    # ------------------------------------------------------------------------------------------ SHAP
    def shap_values(self, X: Any, *, algorithm: str = "auto", nsamples: int | None = None) -> ShapResult:
        """SHAP values of ``X``'s rows for the explained output.

        Args:
            X: rows to explain.
            algorithm: ``auto`` (``tree`` when a source tree model was given, else ``kernel``), ``kernel``
                or ``tree``.
            nsamples: coalitions evaluated per row; default all ``2**features`` up to 12 features
                (exact), else 2 x features + 2048 (shap's "auto").
        """
        import shap

        X = self._rows(X)
        requested = algorithm
        if algorithm == "auto":
            algorithm = "tree" if self.source_model is not None else "kernel"
        if algorithm == "tree":
            return self._tree_shap(X, fallback=requested == "auto", nsamples=nsamples)
        if algorithm == "kernel":
            self._require_finite(X, "kernel SHAP")
            n = nsamples or (2**self.n_features if self.n_features <= 12 else 2 * self.n_features + 2048)
            explainer = shap.KernelExplainer(self.predict, self.background.astype(np.float64))
            state = np.random.get_state()
            np.random.seed(self.seed)  # the kernel explainer samples coalitions with numpy's global generator
            try:
                values = explainer.shap_values(X.astype(np.float64), nsamples=n, silent=True)
            finally:
                np.random.set_state(state)
            base = float(np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)[0])
            return ShapResult(
                np.asarray(values, dtype=np.float64).reshape(X.shape[0], -1),
                base,
                self.feature_names,
                "kernel",
                self.output_label,
            )
        raise InvalidInput(f"algorithm must be auto, kernel or tree, got {algorithm!r}")

    def _tree_shap(self, X: np.ndarray, *, fallback: bool = False, nsamples: int | None = None) -> ShapResult:
        import shap

        if self.source_model is None:
            raise InvalidInput("algorithm 'tree' needs the source tree model (source_model=...)")
        # A regressor's output is its raw output (shap refuses "probability" for it); its one-column ONNX
        # output is not a binary classifier's positive class, so it is never mirrored below.
        classifier = hasattr(self.source_model, "predict_proba")
        explainer = shap.TreeExplainer(
            self.source_model,
            data=self.background.astype(np.float64),
            feature_perturbation="interventional",
            model_output="probability" if classifier and self.link == "identity" else "raw",
        )
        raw = explainer.shap_values(X.astype(np.float64), check_additivity=False)
        expected = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
        k = self.class_index if self.class_index is not None else 0
        # The list test comes first: np.asarray of older shap's per-class list is (classes, rows, features),
        # which the 3-D branch would slice along the wrong axes.
        if isinstance(raw, list):  # older shap: one array per class
            values, base = np.asarray(raw[k], dtype=np.float64), expected[k]
        elif np.ndim(raw) == 3:  # (rows, features, classes)
            values, base = np.asarray(raw, dtype=np.float64)[:, :, k], expected[k]
        else:
            values = np.asarray(raw, dtype=np.float64)
            # one output: for a binary classifier it is the positive class
            base = expected[0]
            if classifier and self.class_index == 0:  # the single output is the positive class: mirror it
                values, base = -values, (-base if self.link == "logit" else 1.0 - base)
        # Local accuracy is what TreeSHAP promises; when it fails, the trees' output space is not the one
        # explained (a forest's raw output with link="logit" is the probability), and the values would be
        # attributions of another quantity under this output's label.
        want = self._source_output(X)
        got = values.sum(axis=1) + base
        if not np.allclose(got, want, rtol=1e-5, atol=1e-5 * (1.0 + float(np.max(np.abs(want), initial=0.0)))):
            if fallback:
                return self.shap_values(X, algorithm="kernel", nsamples=nsamples)
            worst = int(np.argmax(np.abs(got - want)))
            raise InvalidInput(
                f"TreeSHAP on {type(self.source_model).__name__} does not explain {self.output_label}: row {worst}'s "
                f"values sum to {got[worst]:.6g} but the source model gives {want[worst]:.6g} (its raw tree output "
                f"is not this quantity); use algorithm='kernel'"
            )
        return ShapResult(values, float(base), self.feature_names, "tree", self.output_label)

    def _source_output(self, X: np.ndarray) -> np.ndarray:
        """The explained output computed by the source model (the quantity TreeSHAP values must add up to)."""
        X64 = X.astype(np.float64)
        k = self.class_index if self.class_index is not None else 0
        if hasattr(self.source_model, "predict_proba"):
            out = np.asarray(self.source_model.predict_proba(X64), dtype=np.float64)
        else:
            out = np.asarray(self.source_model.predict(X64), dtype=np.float64)
        out = out.reshape(out.shape[0], -1)
        out = out[:, k] if out.shape[1] > k else out[:, -1]
        if self.link == "logit":
            p = np.clip(out, 1e-12, 1 - 1e-12)
            out = np.log(p / (1 - p))
        return out

    def _require_finite(self, X: np.ndarray, what: str) -> None:
        """Kernel SHAP and LIME mix rows with the background: a NaN there is no value to mix (shap fails with a
        bare ValueError, LIME's discretizer puts it in no bin), so refuse it by name."""
        for name, arr in (("rows", X), ("background", self.background)):
            bad = ~np.isfinite(arr)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InvalidInput(
                    f"{what} needs finite values: {name} row {r}, feature {self.feature_names[c]!r} is {arr[r, c]}"
                    f" ({int(bad.any(axis=1).sum())} {name} with NaN or inf)"
                )

    def global_importance(self, X: Any, **kwargs) -> dict[str, float]:
        """Mean |SHAP| per feature over ``X``'s rows, largest first."""
        return self.shap_values(X, **kwargs).global_importance()

    # ------------------------------------------------------------------------------------------ LIME
    def lime(
        self, row: Any, *, num_features: int = 10, num_samples: int = 2000, mode: str | None = None
    ) -> list[tuple[str, float]]:
        """LIME explanation of one row: ``[(feature condition, weight), ...]`` by |weight|.

        The local model is fitted to the explained output, as SHAP's: the chosen column after the link (so
        with ``link="logit"`` the weights are in log-odds). ``mode="classification"`` fits LIME's classifier
        mode to the raw probabilities instead (same weights with the identity link); it is refused with another
        link, which it would ignore, and for a 1-D output.
        """
        from lime.lime_tabular import LimeTabularExplainer

        X = self._rows(row)
        if X.shape[0] != 1:
            raise InvalidInput(f"lime explains one row, got {X.shape[0]}")
        self._require_finite(X, "LIME")
        r = X[0].astype(np.float64)
        # Regression over predict() by default: classifier mode would explain predict_all's raw columns, i.e.
        # the probability even under link="logit", and treats a regressor's [N, 1] output as probabilities.
        mode = mode or "regression"
        if mode not in ("classification", "regression"):
            raise InvalidInput(f"mode must be 'classification' or 'regression', got {mode!r}")
        if mode == "classification" and (self.class_index is None or self.link != "identity"):
            raise InvalidInput(
                "LIME's classification mode explains a 2-D probability output with link='identity'; "
                f"this explainer's output is {self.output_label} (use the default regression mode)"
            )
        explainer = LimeTabularExplainer(
            self.background.astype(np.float64),
            feature_names=self.feature_names,
            mode=mode,
            random_state=self.seed,
            discretize_continuous=True,
        )
        if mode == "classification":
            label = self.class_index
            exp = explainer.explain_instance(
                r, self.predict_all, labels=(label,), num_features=num_features, num_samples=num_samples
            )
            return [(name, float(w)) for name, w in exp.as_list(label=label)]
        exp = explainer.explain_instance(r, self.predict, num_features=num_features, num_samples=num_samples)
        return [(name, float(w)) for name, w in exp.as_list()]


_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _by_name(X: Any, feature_names: list[str], what: str) -> Any:
    """Named data (a pandas DataFrame or Series, a mapping of columns such as ``tensor_columns`` returns) as its
    feature columns in ``feature_names``' order; anything else as it is (positional).

    ``np.asarray`` of a DataFrame takes its columns in the frame's order, whatever their names: a frame whose
    columns were the features in another order was explained as other rows, under the declared names.

    Raises:
        InvalidInput: named data that holds some of the features but not all (naming the missing ones), or a
            mapping without every feature.
    """
    if isinstance(X, Mapping):
        names = [str(k) for k in X]
        missing = [n for n in feature_names if n not in X]
        if missing:
            raise InvalidInput(f"{what}: no column(s) {missing[:10]} of the features {feature_names}; got {names[:10]}")
        return np.column_stack([np.asarray(X[n]).reshape(-1) for n in feature_names])
    if hasattr(X, "iloc") and hasattr(X, "to_numpy"):  # pandas
        is_frame = hasattr(X, "columns")
        labels = list(X.columns) if is_frame else list(X.index)
        present = [n for n in feature_names if n in labels]
        if len(present) == len(feature_names):
            return X[feature_names] if is_frame else X[feature_names].to_numpy()
        if present:
            missing = [n for n in feature_names if n not in labels]
            raise InvalidInput(
                f"{what}: no column(s) {missing[:10]} of the features {feature_names}; got {labels[:10]}"
            )
    return X


def _is_float_tensor(onnx_type: str) -> bool:
    """``tensor(float)``, ``tensor(double)``, ``tensor(float16)``: not a ZipMap's ``seq(map(...))``."""
    return onnx_type.startswith("tensor(") and ("float" in onnx_type or "double" in onnx_type)
