"""The native tree kernel (fastml._core.TreeEnsemble, fastml.engine.native_trees) against ONNX Runtime.

ONNX Runtime's TreeEnsembleClassifier / TreeEnsembleRegressor is the reference: every model the kernel accepts
must give ONNX Runtime's labels exactly and its scores to float32 rounding, for hand-built ensembles covering each
comparison mode, missing-value track, base-value layout, class layout and post transform, and for the models fastml
convert makes of scikit-learn, XGBoost and LightGBM. What the kernel does not reproduce it must refuse, saying why,
and malformed bytes must be refused without a crash or a hang.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fastml import _core
from fastml.engine.native_trees import TreeSession, disagreement, probe_rows, tree_session
from fastml.errors import InvalidInput

F = 6
MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")


def _session(model_bytes: bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _random_tree(rng, depth: int, mode: str, thresholds, unbalanced: bool):
    """Nested ('leaf',) / ('branch', feature, threshold, missing, true, false) nodes."""
    if depth == 0 or (unbalanced and rng.random() < 0.3):
        return ("leaf",)
    f = int(rng.integers(0, F))
    t = float(thresholds[f][rng.integers(0, len(thresholds[f]))])
    return (
        "branch",
        f,
        t,
        int(rng.random() < 0.5),
        _random_tree(rng, depth - 1, mode, thresholds, unbalanced),
        _random_tree(rng, depth - 1, mode, thresholds, unbalanced),
    )


def ensemble(
    op: str,
    *,
    n_out: int,
    n_trees: int = 7,
    depth: int = 3,
    mode: str = "BRANCH_LEQ",
    post: str = "NONE",
    base: list[float] | None = None,
    classes: str = "all",
    positive: bool = False,
    unbalanced: bool = False,
    aggregate: str | None = None,
    discrete: bool = False,
    seed: int = 0,
    extra_attrs: dict | None = None,
) -> bytes:
    """A one-node tree-ensemble model with random trees. ``classes`` says which classes (targets) each leaf
    scores: 'all', 'per_tree' (tree t scores t % n_out), 'only0', 'only1', or 'first3' (per tree, of the first
    three only)."""
    rng = np.random.default_rng(seed)
    thresholds = [np.arange(-2, 3, dtype=np.float32) if discrete else rng.normal(size=8).astype(np.float32)] * F
    a: dict[str, list] = {
        k: [] for k in ("treeids", "nodeids", "featureids", "values", "modes", "true", "false", "missing")
    }
    w: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for tree in range(n_trees):
        root = _random_tree(rng, depth, mode, thresholds, unbalanced)
        counter = [0]

        def emit(node, tree=tree, counter=counter):
            me = counter[0]
            counter[0] += 1
            pos = len(a["nodeids"])
            for k, v in zip(
                ("treeids", "nodeids", "featureids", "values", "modes", "true", "false", "missing"),
                (tree, me, 0, 0.0, "LEAF", 0, 0, 0),
            ):
                a[k].append(v)
            if node[0] == "leaf":
                if classes == "all":
                    targets = list(range(n_out))
                elif classes == "per_tree":
                    targets = [tree % n_out]
                elif classes == "first3":
                    targets = [tree % 3]
                else:
                    targets = [0] if classes == "only0" else [1]
                for c in targets:
                    w["treeids"].append(tree)
                    w["nodeids"].append(me)
                    w["ids"].append(c)
                    w["weights"].append(float(rng.random() if positive else rng.normal()))
                return me
            _, f, t, missing, yes, no = node
            a["featureids"][pos], a["values"][pos], a["modes"][pos], a["missing"][pos] = f, t, mode, missing
            a["true"][pos] = emit(yes)
            a["false"][pos] = emit(no)
            return me

        emit(root)
    attrs = dict(
        nodes_treeids=a["treeids"],
        nodes_nodeids=a["nodeids"],
        nodes_featureids=a["featureids"],
        nodes_values=a["values"],
        nodes_modes=a["modes"],
        nodes_truenodeids=a["true"],
        nodes_falsenodeids=a["false"],
        nodes_missing_value_tracks_true=a["missing"],
        post_transform=post,
    )
    if base is not None:
        attrs["base_values"] = base
    if op == "TreeEnsembleClassifier":
        attrs.update(
            class_treeids=w["treeids"],
            class_nodeids=w["nodeids"],
            class_ids=w["ids"],
            class_weights=w["weights"],
            classlabels_int64s=[10 * (k + 1) for k in range(n_out)],
        )
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_out]),
        ]
        node_outputs = ["label", "probabilities"]
    else:
        attrs.update(
            target_treeids=w["treeids"],
            target_nodeids=w["nodeids"],
            target_ids=w["ids"],
            target_weights=w["weights"],
            n_targets=n_out,
        )
        if aggregate:
            attrs["aggregate_function"] = aggregate
        outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, n_out])]
        node_outputs = ["variable"]
    attrs.update(extra_attrs or {})
    node = helper.make_node(op, ["X"], node_outputs, domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "trees", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, F])], outputs
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model.SerializeToString()


def rows(n: int = 3000, *, discrete: bool = False, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, F)).astype(np.float32) if discrete else rng.normal(size=(n, F)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def assert_same_as_onnxruntime(model: bytes, x: np.ndarray) -> TreeSession:
    sess = _session(model)
    scored = tree_session(sess, model)
    assert isinstance(scored, TreeSession), "the kernel refused, or differed on its probe rows"
    names = [o.name for o in sess.get_outputs()]
    feed = {sess.get_inputs()[0].name: x}
    want = sess.run(names, feed)
    got = scored.run(names, feed)
    for name, w, g in zip(names, want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if w.dtype == np.int64:
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
    return scored


CLASSIFIERS = {
    # two classes
    "binary, class 0 scored, one base value, logistic (gradient boosting)": dict(
        n_out=2, classes="only0", base=[0.3], post="LOGISTIC"
    ),
    "binary, class 0 scored, no base value, logistic": dict(n_out=2, classes="only0", post="LOGISTIC"),
    "binary, class 0 scored, positive weights, no transform": dict(n_out=2, classes="only0", positive=True),
    "binary, class 0 scored, one base value, softmax": dict(n_out=2, classes="only0", base=[-0.2], post="SOFTMAX"),
    "binary, class 0 scored, no base value, no transform": dict(n_out=2, classes="only0"),
    "binary, class 0 scored, two base values": dict(n_out=2, classes="only0", base=[0.1, 0.4]),
    "binary, class 1 scored, two base values, logistic": dict(
        n_out=2, classes="only1", base=[0.5, -0.5], post="LOGISTIC"
    ),
    "binary, both scored, positive (a random forest)": dict(n_out=2, classes="all", positive=True),
    "binary, both scored, two base values, softmax": dict(n_out=2, classes="all", base=[0.2, 0.1], post="SOFTMAX"),
    # more classes
    "3 classes, one per tree, base values, softmax": dict(
        n_out=3, classes="per_tree", base=[0.1, 0.2, 0.3], post="SOFTMAX", n_trees=9
    ),
    "3 classes, one per tree, softmax-zero": dict(n_out=3, classes="per_tree", post="SOFTMAX_ZERO", n_trees=9),
    "4 classes, all per leaf, positive (a random forest)": dict(n_out=4, classes="all", positive=True),
    "4 classes, class 3 never scored, logistic": dict(n_out=4, classes="first3", post="LOGISTIC", n_trees=9),
    "3 classes, unbalanced deep trees": dict(n_out=3, classes="per_tree", depth=7, unbalanced=True, n_trees=12),
}

REGRESSORS = {
    "one target, sum, base value": dict(n_out=1, classes="all", base=[0.7]),
    "one target, average (a random forest)": dict(n_out=1, classes="all", aggregate="AVERAGE"),
    "one target, logistic (which ONNX Runtime does not apply to one target)": dict(
        n_out=1, classes="all", post="LOGISTIC"
    ),
    "three targets, sum, base values": dict(n_out=3, classes="all", base=[1.0, 2.0, 3.0]),
    "two targets, average, logistic": dict(n_out=2, classes="all", aggregate="AVERAGE", post="LOGISTIC"),
    "three targets, one per tree, softmax": dict(n_out=3, classes="per_tree", post="SOFTMAX", n_trees=6),
    "one target, unbalanced deep trees": dict(n_out=1, classes="all", depth=9, unbalanced=True, n_trees=5),
}


@pytest.mark.parametrize("case", list(CLASSIFIERS))
def test_classifier_gives_onnxruntime_labels_and_probabilities(case):
    assert_same_as_onnxruntime(ensemble("TreeEnsembleClassifier", **CLASSIFIERS[case]), rows())


@pytest.mark.parametrize("case", list(REGRESSORS))
def test_regressor_gives_onnxruntime_values(case):
    assert_same_as_onnxruntime(ensemble("TreeEnsembleRegressor", **REGRESSORS[case]), rows())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["TreeEnsembleClassifier", "TreeEnsembleRegressor"])
def test_every_comparison_mode_on_values_equal_to_the_thresholds(op, mode):
    # Integer-valued data and thresholds: many rows sit exactly on a split, where <= and <, == and != part.
    extra = dict(classes="only0", base=[0.1], post="LOGISTIC") if op == "TreeEnsembleClassifier" else {}
    model = ensemble(op, n_out=2 if op == "TreeEnsembleClassifier" else 1, mode=mode, discrete=True, **extra)
    x = rows(discrete=True)
    scored = assert_same_as_onnxruntime(model, x)
    assert (x == np.round(x)).all() or np.isnan(x).any()  # the data does reach the equal case
    assert scored.kernel.n_trees == 7


def test_a_nan_goes_the_way_its_node_tracks():
    model = ensemble("TreeEnsembleRegressor", n_out=1, classes="all", n_trees=3)
    x = np.full((4, F), np.nan, dtype=np.float32)
    sess = _session(model)
    want = sess.run(None, {"X": x})[0]
    _, got = _core.TreeEnsemble(model).predict(x)
    np.testing.assert_array_equal(got, want)


# ---- models as fastml convert makes them ----


def _converted(tmp_path, estimator, X, y):
    import pickle

    from fastml.convert.frameworks import convert_file

    estimator.fit(X, y)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(estimator))
    convert_file(tmp_path / "m.pkl", tmp_path / "m.onnx")
    return (tmp_path / "m.onnx").read_bytes()


def _data(n=600, classes=2, nan=False, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n, n_features=F, n_informative=4, n_classes=classes, n_clusters_per_class=1, random_state=seed
    )
    X = X.astype(np.float32)
    if nan:
        X[np.random.default_rng(seed).random(X.shape) < 0.05] = np.nan
    return X, y


def _frameworks():
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier

    return {
        "sklearn HistGradientBoostingClassifier, binary, NaN": (HistGradientBoostingClassifier(max_iter=20), 2, True),
        "sklearn HistGradientBoostingClassifier, 3 classes, NaN": (
            HistGradientBoostingClassifier(max_iter=10),
            3,
            True,
        ),
        "sklearn HistGradientBoostingRegressor, NaN": (HistGradientBoostingRegressor(max_iter=20), 0, True),
        "sklearn GradientBoostingClassifier, binary": (GradientBoostingClassifier(n_estimators=20), 2, False),
        "sklearn GradientBoostingClassifier, 3 classes": (GradientBoostingClassifier(n_estimators=10), 3, False),
        "sklearn GradientBoostingRegressor": (GradientBoostingRegressor(n_estimators=20), 0, False),
        "sklearn RandomForestClassifier, binary": (RandomForestClassifier(n_estimators=10, random_state=0), 2, False),
        "sklearn RandomForestClassifier, 3 classes": (
            RandomForestClassifier(n_estimators=10, random_state=0),
            3,
            False,
        ),
        "sklearn RandomForestRegressor": (RandomForestRegressor(n_estimators=10, random_state=0), 0, False),
        "sklearn ExtraTreesRegressor": (ExtraTreesRegressor(n_estimators=10, random_state=0), 0, False),
        "sklearn DecisionTreeClassifier": (DecisionTreeClassifier(max_depth=6), 3, False),
    }


@pytest.mark.parametrize("case", list(_frameworks()))
def test_converted_scikit_learn_models(tmp_path, case):
    estimator, classes, nan = _frameworks()[case]
    X, y = _data(classes=max(classes, 2), nan=nan)
    if not classes:
        y = np.nan_to_num(X[:, 0]) * 2.0 + np.nan_to_num(X[:, 1])
    model = _converted(tmp_path, estimator, X, y)
    x_new, _ = _data(n=2000, classes=max(classes, 2), nan=nan, seed=1)
    assert_same_as_onnxruntime(model, x_new)


@pytest.mark.parametrize("classes", [0, 2, 3])
def test_converted_xgboost_models(tmp_path, classes):
    xgboost = pytest.importorskip("xgboost")
    X, y = _data(classes=max(classes, 2), nan=True)
    if classes:
        est = xgboost.XGBClassifier(n_estimators=15, max_depth=3)
    else:
        est, y = xgboost.XGBRegressor(n_estimators=15, max_depth=3), np.nan_to_num(X[:, 0]) * 2.0
    model = _converted(tmp_path, est, X, y)
    assert_same_as_onnxruntime(model, _data(n=2000, classes=max(classes, 2), nan=True, seed=1)[0])


@pytest.mark.parametrize("classes", [0, 2, 3])
def test_converted_lightgbm_models(tmp_path, classes):
    lightgbm = pytest.importorskip("lightgbm")
    X, y = _data(classes=max(classes, 2), nan=True)
    if classes:
        est = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=8, verbose=-1)
    else:
        est, y = lightgbm.LGBMRegressor(n_estimators=15, num_leaves=8, verbose=-1), np.nan_to_num(X[:, 0]) * 2.0
    model = _converted(tmp_path, est, X, y)
    assert_same_as_onnxruntime(model, _data(n=2000, classes=max(classes, 2), nan=True, seed=1)[0])


# ---- what the kernel refuses, and why ----

REFUSED = {
    "PROBIT": (dict(n_out=1, classes="all", post="PROBIT"), "post_transform PROBIT"),
    "MIN": (dict(n_out=1, classes="all", aggregate="MIN"), "aggregate_function MIN"),
    "MAX": (dict(n_out=1, classes="all", aggregate="MAX"), "aggregate_function MAX"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_regressors_say_why_and_keep_onnxruntime(case):
    kwargs, why = REFUSED[case]
    model = ensemble("TreeEnsembleRegressor", **kwargs)
    with pytest.raises(InvalidInput, match=why):
        _core.TreeEnsemble(model)
    sess = _session(model)
    assert tree_session(sess, model) is sess


def test_string_labels_mixed_modes_and_other_graphs_are_refused():
    m = onnx.load_from_string(ensemble("TreeEnsembleClassifier", n_out=2, classes="only0"))
    node = m.graph.node[0]
    kept = [a for a in node.attribute if a.name != "classlabels_int64s"]
    kept.append(helper.make_attribute("classlabels_strings", ["no", "yes"]))
    del node.attribute[:]
    node.attribute.extend(kept)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.STRING
    with pytest.raises(InvalidInput, match="string class labels"):
        _core.TreeEnsemble(m.SerializeToString())
    sess = _session(m.SerializeToString())
    assert tree_session(sess, m.SerializeToString()) is sess

    mixed = onnx.load_from_string(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    modes = mixed.graph.node[0].attribute
    (attr,) = [a for a in modes if a.name == "nodes_modes"]
    first_branch = list(attr.strings).index(b"BRANCH_LEQ")
    attr.strings[first_branch] = b"BRANCH_LT"
    with pytest.raises(InvalidInput, match="different comparison modes"):
        _core.TreeEnsemble(mixed.SerializeToString())

    # an operator in front of the trees: ONNX Runtime runs the graph
    m = onnx.load_from_string(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    m.graph.node[0].input[0] = "Xf"
    m.graph.node.insert(0, helper.make_node("Abs", ["X"], ["Xf"]))
    with pytest.raises(InvalidInput, match="has a Abs node"):
        _core.TreeEnsemble(m.SerializeToString())
    sess = _session(m.SerializeToString())
    assert tree_session(sess, m.SerializeToString()) is sess


def test_identity_nodes_around_the_trees_are_followed():
    # converters rename the outputs with Identity nodes (skl2onnx's gradient boosting, onnxmltools' LightGBM)
    m = onnx.load_from_string(ensemble("TreeEnsembleClassifier", n_out=3, classes="per_tree", n_trees=6))
    node = m.graph.node[0]
    node.input[0], node.output[0], node.output[1] = "X1", "label_raw", "proba_raw"
    m.graph.node.extend(
        [
            helper.make_node("Identity", ["X"], ["X1"]),
            helper.make_node("Identity", ["label_raw"], ["label"]),
            helper.make_node("Identity", ["proba_raw"], ["p1"]),
            helper.make_node("Identity", ["p1"], ["probabilities"]),
        ]
    )
    scored = assert_same_as_onnxruntime(m.SerializeToString(), rows())
    assert sorted(scored.kernel.outputs) == [("label", 0), ("probabilities", 1)]


def test_double_precision_thresholds_are_refused():
    m = onnx.load_from_string(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    node = m.graph.node[0]
    (values,) = [a for a in node.attribute if a.name == "nodes_values"]
    as_tensor = helper.make_attribute(
        "nodes_values_as_tensor", helper.make_tensor("v", TensorProto.DOUBLE, [len(values.floats)], list(values.floats))
    )
    kept = [a for a in node.attribute if a.name != "nodes_values"] + [as_tensor]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(InvalidInput, match="holds a tensor"):
        _core.TreeEnsemble(m.SerializeToString())


def test_leaves_of_one_tree_scoring_different_classes_are_refused():
    m = onnx.load_from_string(ensemble("TreeEnsembleClassifier", n_out=3, classes="per_tree", n_trees=3))
    (ids,) = [a for a in m.graph.node[0].attribute if a.name == "class_ids"]
    ids.ints[0] = (ids.ints[0] + 1) % 3  # one leaf of tree 0 now scores another class than its siblings
    with pytest.raises(InvalidInput, match="score different classes"):
        _core.TreeEnsemble(m.SerializeToString())


def test_a_cycle_or_a_shared_node_is_refused_not_followed():
    for edit in ("cycle", "shared"):
        m = onnx.load_from_string(ensemble("TreeEnsembleRegressor", n_out=1, classes="all", n_trees=1, depth=3))
        attrs = {a.name: a for a in m.graph.node[0].attribute}
        if edit == "cycle":
            attrs["nodes_truenodeids"].ints[1] = 0  # node 1's true branch back to the root
        else:
            attrs["nodes_falsenodeids"].ints[0] = attrs["nodes_truenodeids"].ints[0]  # both ways to one child
        with pytest.raises(InvalidInput, match="not a tree|does not reach"):
            _core.TreeEnsemble(m.SerializeToString())


def test_malformed_bytes_are_refused_without_a_crash():
    good = ensemble("TreeEnsembleClassifier", n_out=3, classes="per_tree", n_trees=4)
    _core.TreeEnsemble(good)
    rng = np.random.default_rng(0)
    refused = 0
    for cut in sorted(set(rng.integers(1, len(good), size=150).tolist())):
        try:
            _core.TreeEnsemble(good[:cut])
        except InvalidInput:
            refused += 1
    assert refused > 100  # a truncated graph is not read as a smaller one
    for _ in range(100):
        noise = bytearray(good)
        for i in rng.integers(0, len(noise), size=8):
            noise[i] = int(rng.integers(0, 256))
        try:
            k = _core.TreeEnsemble(bytes(noise))
        except InvalidInput:
            continue
        k.predict(
            rows(50)[:, : max(k.min_features, 1)] if k.min_features <= F else np.zeros((2, k.min_features), np.float32)
        )
    with pytest.raises(InvalidInput):
        _core.TreeEnsemble(b"")
    with pytest.raises(InvalidInput, match="bytes"):
        _core.TreeEnsemble(np.zeros(4, dtype=np.float32))


def test_predict_checks_the_array_it_is_given():
    k = _core.TreeEnsemble(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    with pytest.raises(InvalidInput, match="float32"):
        k.predict(rows(10).astype(np.float64))
    with pytest.raises(InvalidInput, match="float32"):
        k.predict(np.asfortranarray(rows(10)))
    with pytest.raises(InvalidInput, match="columns"):
        k.predict(np.zeros((3, k.min_features - 1), dtype=np.float32))
    labels, scores = k.predict(np.zeros((0, F), dtype=np.float32))
    assert labels is None and scores.shape == (0, 1)


# ---- the session face ----


def test_feeds_the_kernel_does_not_take_go_to_onnxruntime_with_its_errors():
    model = ensemble("TreeEnsembleClassifier", n_out=2, classes="only0", base=[0.1], post="LOGISTIC")
    scored = tree_session(_session(model), model)
    assert isinstance(scored, TreeSession)
    with pytest.raises(Exception, match="(?i)type|double"):  # ONNX Runtime's own words for a float64 feed
        scored.run(None, {"X": rows(5).astype(np.float64)})
    with pytest.raises(Exception, match="(?i)dim|shape|index"):
        scored.run(None, {"X": rows(5)[:, :3].copy()})
    # a strided view: ONNX Runtime scores it, the same values as the kernel on a copy
    x = rows(20)
    view = np.concatenate([x, x], axis=1)[:, :F]
    want = scored.run(None, {"X": np.ascontiguousarray(view)})
    got = scored.run(None, {"X": view})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    only = scored.run(["probabilities"], {"X": x})
    assert len(only) == 1 and only[0].shape == (20, 2)
    twice = scored.run(["label", "label"], {"X": x})
    np.testing.assert_array_equal(twice[0], twice[1])
    assert not np.shares_memory(twice[0], twice[1])
    empty = scored.run(None, {"X": np.zeros((0, F), dtype=np.float32)})  # ONNX Runtime's own answer
    assert empty[0].shape == (0,) and empty[1].shape == (0, 2)


def test_a_model_with_a_fixed_row_count_keeps_onnxruntimes_check():
    m = onnx.load_from_string(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    model = m.SerializeToString()
    scored = tree_session(_session(model), model)
    x = rows(4)
    if isinstance(scored, TreeSession):  # the probe's 512 rows cannot run on it: ONNX Runtime keeps it
        np.testing.assert_allclose(scored.run(None, {"X": x})[0], _session(model).run(None, {"X": x})[0], rtol=1e-6)
    with pytest.raises(Exception, match="(?i)dim|shape|index"):
        scored.run(None, {"X": rows(5)})


def test_a_kernel_that_differs_from_onnxruntime_is_not_used():
    a = ensemble("TreeEnsembleRegressor", n_out=1, classes="all", seed=1)
    b = ensemble("TreeEnsembleRegressor", n_out=1, classes="all", seed=2)
    sess_b = _session(b)
    # the kernel built from another model than the session's: the probe rows show it
    assert tree_session(sess_b, a) is sess_b
    k = _core.TreeEnsemble(a)
    assert "differs" in disagreement(sess_b, TreeSession(sess_b, k), probe_rows(k, F))


def test_probe_rows_for_a_wide_input_touch_only_the_features_read():
    k = _core.TreeEnsemble(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    x = probe_rows(k, 5000)
    read = set(k.splits()[0].tolist())
    assert x.shape == (512, 5000) and x.flags.c_contiguous
    assert all(np.isnan(x[:, f]).any() for f in read)
    assert not np.isnan(x[:, [f for f in range(5000) if f not in read]]).any()


def test_probe_rows_sit_on_and_beside_the_thresholds():
    k = _core.TreeEnsemble(ensemble("TreeEnsembleRegressor", n_out=1, classes="all"))
    features, thresholds = k.splits()
    assert len(features) == len(thresholds) > 0
    x = probe_rows(k, F)
    assert x.shape == (512, F) and x.dtype == np.float32
    on = np.isin(x[:, features[0]], thresholds[features == features[0]])
    assert on.sum() > 20
    assert np.isnan(x).sum() > 0
