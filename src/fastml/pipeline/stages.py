"""The ten stages. Each reads what earlier stages wrote under the run directory (so a resumed run
needs nothing from memory), writes its own outputs to its ``NN_<stage>/`` directory and returns a
small JSON summary that goes into ``run.json``.

Stage functions are looked up by name (``stage_<name>``) at run time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from fastml.errors import IntegrityError, InternalError, InvalidInput, NotFound, PermissionDenied

log = logging.getLogger("fastml.pipeline")


class Context:
    """What a stage needs: the run, its config, progress reporting and loaders for earlier outputs."""

    def __init__(self, run, cfg, progress, workers: int = 1):
        self.run = run
        self.cfg = cfg
        self.progress = progress
        self.workers = workers

    def out(self, stage: str) -> Path:
        return self.run.stage_dir(stage)

    @functools.cached_property
    def frame(self):
        import pandas as pd

        return pd.read_parquet(self.out("ingest") / "data.parquet")

    @functools.cached_property
    def spec(self):
        from fastml.convert import InputSpec

        return InputSpec.from_dict(json.loads((self.out("features") / "spec.json").read_text()))

    @functools.cached_property
    def split(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.load(self.out("split") / "split.npz")
        return z["train"], z["holdout"]

    @functools.cached_property
    def target(self) -> np.ndarray:
        return self.frame[self.cfg.data.target].to_numpy()

    def xy(self, part: str):
        idx = self.split[0] if part == "train" else self.split[1]
        sub = self.frame.iloc[idx].reset_index(drop=True)
        return self.spec.model_input(sub), self.target[idx]

    @functools.cached_property
    def best_params(self) -> dict:
        return json.loads((self.out("tune") / "best_params.json").read_text())

    @functools.cached_property
    def model(self):
        import joblib

        return joblib.load(self.out("train") / "model.joblib")


# 1 -------------------------------------------------------------------------------------------------
def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise NotFound(f"data.path: {str(path)!r}: no such file") from None
    except Exception as exc:  # parser errors of either format
        raise InvalidInput(f"data.path: cannot read {str(path)!r}: {exc}") from exc


def dataset_fingerprint(frame) -> str:
    """sha256 over column names, dtypes and row hashes: same data, same fingerprint."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def stage_ingest(ctx: Context) -> dict:
    import pandas as pd

    cfg = ctx.cfg
    feature_refs = None
    if cfg.data.path is not None:
        frame = _read_table(cfg.data_path())
        source = str(cfg.data_path())
    else:
        try:
            from fastml.features import FeatureStore
        except ImportError as exc:
            raise InvalidInput(f"data.training_set: the feature store is not available in this build ({exc})") from exc
        ts = cfg.data.training_set
        ent_path = Path(ts.entity_rows)
        if not ent_path.is_absolute():
            ent_path = Path(cfg.base_dir) / ent_path
        entities = _read_table(ent_path)
        got = FeatureStore().get_training_set(entities, list(ts.features), timestamp_column=ts.timestamp_column)
        frame = got.to_pandas() if hasattr(got, "to_pandas") else pd.DataFrame(got)
        # The point-in-time timestamp places rows in time; it is not a feature.
        frame = frame.drop(columns=[ts.timestamp_column])
        source = f"feature store training set ({len(ts.features)} features, entities {ent_path})"
        feature_refs = list(ts.features)
    # A name in data.drop that is not a column (a typo) would leave the column it meant (an id, a leaky
    # field) among the features without a word; the timestamp of a training set is already dropped.
    already = {cfg.data.training_set.timestamp_column} if cfg.data.training_set is not None else set()
    unknown = [c for c in cfg.data.drop if c not in frame.columns and c not in already]
    if unknown:
        raise InvalidInput(f"data.drop: column(s) {unknown} are not in the data (columns: {list(frame.columns)})")
    frame = frame.drop(columns=[c for c in cfg.data.drop if c in frame.columns])
    frame.columns = [str(c) for c in frame.columns]
    out = ctx.out("ingest")
    frame.to_parquet(out / "data.parquet", index=False)
    fp = dataset_fingerprint(frame)
    info = {
        "rows": int(len(frame)),
        "columns": list(frame.columns),
        "source": source,
        "dataset_fingerprint": fp,
        "feature_refs": feature_refs,
    }
    (out / "ingest.json").write_text(json.dumps(info, indent=2))
    return {"rows": info["rows"], "columns": len(frame.columns), "dataset_fingerprint": fp}


# 2 -------------------------------------------------------------------------------------------------
def validation_checks(frame, cfg) -> list[dict]:
    """Every check with its outcome: ``{"check", "column", "passed", "detail"}``."""
    import pandas as pd

    v = cfg.validate
    checks: list[dict] = []

    def add(check, column, passed, detail):
        checks.append({"check": check, "column": column, "passed": bool(passed), "detail": detail})

    target = cfg.data.target
    add(
        "schema",
        target,
        target in frame.columns,
        "target column present"
        if target in frame.columns
        else f"target column missing; columns are {list(frame.columns)}",
    )
    for col, kind in v.columns.items():
        if col not in frame.columns:
            add("schema", col, False, f"expected column ({kind}) is missing")
            continue
        is_num = pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])
        ok = is_num if kind == "number" else not is_num
        add("schema", col, ok, f"expected {kind}, found dtype {frame[col].dtype}")
    for col in cfg.features.numeric or []:
        if col in frame.columns and not pd.api.types.is_numeric_dtype(frame[col]):
            add("schema", col, False, f"declared numeric feature has dtype {frame[col].dtype}")
    add("rows", None, len(frame) >= v.min_rows, f"{len(frame)} rows (minimum {v.min_rows})")
    for col in frame.columns:
        frac = float(frame[col].isna().mean()) if len(frame) else 0.0
        limit = 0.0 if col == target else v.max_null_fraction
        if frac > limit:
            add("nulls", col, False, f"{frac:.1%} null (maximum {limit:.1%})")
    if v.max_null_fraction >= 0 and not any(c["check"] == "nulls" for c in checks):
        add("nulls", None, True, f"every column at most {v.max_null_fraction:.1%} null, target none")
    for col, (lo, hi) in v.ranges.items():
        if col not in frame.columns:
            add("range", col, False, "column for range check is missing")
            continue
        vals = pd.to_numeric(frame[col], errors="coerce")
        bad = int(((vals < lo) | (vals > hi)).sum())
        # Values that are not numbers cannot be within the range (coerced to NaN they compared as neither
        # below nor above it, so a range on a text column used to pass).
        not_num = int((vals.isna() & frame[col].notna()).sum())
        if not_num:
            detail = f"{not_num} value(s) are not numbers" + (f", {bad} outside [{lo:g}, {hi:g}]" if bad else "")
        else:
            detail = f"{bad} value(s) outside [{lo:g}, {hi:g}]" if bad else f"all within [{lo:g}, {hi:g}]"
        add("range", col, bad == 0 and not_num == 0, detail)
    if target in frame.columns and len(frame):
        y = frame[target].dropna()
        if cfg.task == "classification":
            shares = y.value_counts(normalize=True)
            counts = y.value_counts()
            add("class_balance", target, len(shares) >= 2, f"{len(shares)} class(es) (need at least 2)")
            if len(shares) >= 2:
                worst = shares.idxmin()
                worst = worst.item() if hasattr(worst, "item") else worst
                add(
                    "class_balance",
                    target,
                    shares.min() >= v.min_class_fraction,
                    f"smallest class {worst!r} has {shares.min():.2%} of rows (minimum {v.min_class_fraction:.2%})",
                )
                add(
                    "class_balance",
                    target,
                    counts.min() >= cfg.folds + 1,
                    f"smallest class has {int(counts.min())} rows (needs at least folds + 1 = {cfg.folds + 1} for stratified CV and holdout)",
                )
                if cfg.model.family == "xgboost":
                    # XGBClassifier refuses any other labels, so every trial would fail inside tuning.
                    labels = list(counts.index)
                    ok = set(labels) == set(range(len(labels)))
                    shown = sorted(labels, key=str)[:10]
                    add(
                        "class_labels",
                        target,
                        ok,
                        f"model.family 'xgboost' needs class labels 0..{len(labels) - 1}"
                        + ("" if ok else f"; found {shown} (encode the target, or use lightgbm)"),
                    )
                if cfg.model.family == "torch_mlp":
                    # The ONNX export of the MLP carries the labels as an INT64 tensor; found after training.
                    ok = pd.api.types.is_integer_dtype(frame[target]) or pd.api.types.is_bool_dtype(frame[target])
                    add(
                        "class_labels",
                        target,
                        ok,
                        "model.family 'torch_mlp' needs integer class labels"
                        + ("" if ok else f"; the target has dtype {frame[target].dtype} (encode it as integers)"),
                    )
        else:
            # k-fold CV runs on the training split (what the holdout leaves: train_test_split rounds the
            # holdout up); fewer rows than folds would fail inside tuning.
            n_train = len(y) - math.ceil(cfg.split.holdout_fraction * len(y))
            add(
                "rows",
                None,
                n_train >= cfg.folds,
                f"{n_train} training row(s) after the holdout (need at least folds = {cfg.folds})",
            )
            ok = pd.api.types.is_numeric_dtype(frame[target])
            add(
                "schema",
                target,
                ok,
                f"regression target dtype {frame[target].dtype}" + ("" if ok else " is not numeric"),
            )
    return checks


def format_report(checks: list[dict]) -> str:
    failed = [c for c in checks if not c["passed"]]
    lines = [f"data validation failed: {len(failed)} of {len(checks)} check(s) failed"]
    for c in failed:
        where = f" [{c['column']}]" if c["column"] is not None else ""
        lines.append(f"  - {c['check']}{where}: {c['detail']}")
    return "\n".join(lines)


def stage_validate(ctx: Context) -> dict:
    checks = validation_checks(ctx.frame, ctx.cfg)
    out = ctx.out("validate")
    (out / "report.json").write_text(json.dumps({"checks": checks}, indent=2, default=str))
    failed = [c for c in checks if not c["passed"]]
    if failed:
        report = format_report(checks)
        (out / "report.txt").write_text(report + "\n")
        raise InvalidInput(report)
    return {"checks": len(checks), "failed": 0}


# 3 -------------------------------------------------------------------------------------------------
def stage_features(ctx: Context) -> dict:
    import joblib

    from fastml.pipeline.features import build_preprocessor, infer_spec
    from fastml.pipeline.models import FAMILIES

    spec = infer_spec(ctx.frame, ctx.cfg)
    out = ctx.out("features")
    (out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
    pre = build_preprocessor(ctx.cfg, spec, FAMILIES[ctx.cfg.model.family].scaled)
    joblib.dump(pre, out / "preprocessor.joblib")  # unfitted; fitted inside each model's Pipeline
    (out / "preprocessor.txt").write_text(repr(pre) + "\n")
    ctx.__dict__.pop("spec", None)
    return {
        "numeric": len(spec.numeric),
        "categorical": len(spec.categorical),
        "derived": len(ctx.cfg.features.derived),
        "layout": spec.layout,
    }


# 4 -------------------------------------------------------------------------------------------------
def stage_split(ctx: Context) -> dict:
    from sklearn.model_selection import train_test_split

    cfg = ctx.cfg
    y = ctx.target
    idx = np.arange(len(y))
    strat = y if cfg.task == "classification" else None
    try:
        tr, ho = train_test_split(idx, test_size=cfg.split.holdout_fraction, random_state=cfg.seed, stratify=strat)
    except ValueError as exc:
        raise InvalidInput(f"split: {exc}") from exc
    tr, ho = np.sort(tr), np.sort(ho)
    np.savez(ctx.out("split") / "split.npz", train=tr, holdout=ho)
    ctx.__dict__.pop("split", None)
    return {"train_rows": int(len(tr)), "holdout_rows": int(len(ho)), "stratified": strat is not None}


# 5 -------------------------------------------------------------------------------------------------
def stage_tune(ctx: Context) -> dict:
    from fastml.pipeline import tune

    cfg = ctx.cfg
    out = ctx.out("tune")
    storage = tune.make_storage(cfg, out)
    study = tune.open_study(cfg, storage)
    if cfg.tune.storage is None:
        stale = tune.fail_stale_trials(study)
        if stale:
            log.warning("tune: %d trial(s) left running by a crashed process marked failed", stale)
    n_total = cfg.tune.n_trials
    if cfg.tune.sampler == "grid":
        n_total = min(n_total, tune.grid_size(tune.search_space(cfg)))
    todo = tune.remaining_trials(study, n_total)
    ctx.progress.trials_started(n_total, n_total - todo)
    workers_info: list[dict] = []
    if todo:
        if ctx.workers > 1:
            workers_info = tune.run_workers(
                ctx.run.dir, tune.split_trials(todo, ctx.workers), ctx.progress, study, n_total
            )
        else:
            X, y = ctx.xy("train")
            objective = tune.make_objective(cfg, ctx.spec, X, y, tune.fold_indices(cfg, y))
            done = [n_total - todo]

            def cb(st, trial):
                # Count locally: listing every trial after each one would cost O(n^2) storage reads.
                done[0] += 1
                ctx.progress.trials_update(min(done[0], n_total), n_total, tune._best(st))

            tune.optimize(study, objective, todo, study_total=n_total, timeout_s=cfg.tune.timeout_s, callbacks=[cb])
    summary = tune.trial_summary(study)
    summary["study_name"] = study.study_name
    summary["workers"] = workers_info
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=str))
    if summary["best_params"] is None:
        first = summary["failed"][0]["error"] if summary["failed"] else "no trial finished"
        raise InternalError(
            f"tune: no trial completed ({summary['counts'].get('fail', 0)} failed; first error: {first})"
        )
    (out / "best_params.json").write_text(json.dumps(summary["best_params"], indent=2))
    ctx.__dict__.pop("best_params", None)
    c = summary["counts"]
    return {
        "trials": summary["total"],
        "complete": c.get("complete", 0),
        "pruned": c.get("pruned", 0),
        "failed": c.get("fail", 0),
        "best_value": summary["best_value"],
        "best_params": summary["best_params"],
        "metric": cfg.metric_name,
        "study": study.study_name,
    }


# 6 -------------------------------------------------------------------------------------------------
def stage_train(ctx: Context) -> dict:
    import joblib

    from fastml.pipeline.features import build_model_pipeline

    X, y = ctx.xy("train")
    model = build_model_pipeline(ctx.cfg, ctx.spec, ctx.best_params, final=True)
    model.fit(X, y)
    out = ctx.out("train")
    tmp = out / "model.joblib.tmp"
    joblib.dump(model, tmp)
    tmp.replace(out / "model.joblib")
    params = {**ctx.cfg.model.params, **ctx.best_params}
    (out / "params.json").write_text(json.dumps(params, indent=2, default=str))
    ddp = getattr(model.steps[-1][1], "ddp_info_", None)
    if ddp is not None:
        (out / "ddp.json").write_text(json.dumps(ddp, indent=2))
    ctx.__dict__.pop("model", None)
    return {"params": params, "train_rows": int(len(y)), **({"ddp_world_size": ddp["world_size"]} if ddp else {})}


# 7 -------------------------------------------------------------------------------------------------
def stage_cross_validate(ctx: Context) -> dict:
    from fastml.pipeline import tune
    from fastml.pipeline.features import build_model_pipeline
    from fastml.pipeline.metrics import all_metrics

    X, y = ctx.xy("train")
    per_fold = []
    for tr, va in tune.fold_indices(ctx.cfg, y):
        est = build_model_pipeline(ctx.cfg, ctx.spec, ctx.best_params)
        est.fit(tune._take(X, tr), y[tr])
        per_fold.append(all_metrics(ctx.cfg.task, est, tune._take(X, va), y[va]))
    names = per_fold[0].keys()
    result = {
        n: {"mean": float(np.nanmean([f[n] for f in per_fold])), "std": float(np.nanstd([f[n] for f in per_fold]))}
        for n in names
    }
    (ctx.out("cross_validate") / "cv.json").write_text(json.dumps({"folds": per_fold, "summary": result}, indent=2))
    m = ctx.cfg.metric_name
    return {"folds": len(per_fold), "metric": m, "mean": result[m]["mean"], "std": result[m]["std"]}


# 8 -------------------------------------------------------------------------------------------------
def stage_evaluate(ctx: Context) -> dict:
    from fastml.pipeline.metrics import all_metrics

    X, y = ctx.xy("holdout")
    metrics = all_metrics(ctx.cfg.task, ctx.model, X, y)
    out = ctx.out("evaluate")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # Per-example results (keyed by row number in the ingested data) let the registry compare versions
    # with McNemar's test (classification) or a paired bootstrap of absolute errors (regression).
    pred = ctx.model.predict(X)
    ids = [int(i) for i in ctx.split[1]]
    if ctx.cfg.task == "classification":
        per_example = {"correct": [bool(v) for v in (np.asarray(pred) == y)], "example_ids": ids}
    else:
        # absolute errors: lower is better, whatever direction compare() is asked for the headline metric
        per_example = {
            "scores": [float(v) for v in np.abs(np.asarray(pred, dtype=np.float64) - y.astype(np.float64))],
            "higher_is_better": False,
            "example_ids": ids,
        }
    (out / "eval_results.json").write_text(json.dumps(per_example))
    return metrics


# 9 -------------------------------------------------------------------------------------------------
def stage_export(ctx: Context) -> dict:
    from fastml.convert import check_parity, compile_onnx, to_onnx

    cfg = ctx.cfg
    out = ctx.out("export")
    onx = to_onnx(ctx.model, ctx.spec, opset=cfg.export.opset)
    raw = out / "model.onnx"
    raw.write_bytes(onx.SerializeToString())
    compiled = compile_onnx(raw, out / "model.optimized.onnx")
    X, _ = ctx.xy("holdout")
    reports = {}
    for label, path in (("onnx", raw), ("optimized", compiled)):
        reports[label] = check_parity(
            ctx.model, path, X, ctx.spec, task=cfg.task, atol=cfg.export.parity_atol, rtol=cfg.export.parity_rtol
        ).to_dict()
    (out / "parity.json").write_text(json.dumps(reports, indent=2))
    bad = {k: r["failures"] for k, r in reports.items() if not r["ok"]}
    if bad:
        raise IntegrityError(f"export: ONNX parity check failed on the holdout: {bad}")
    return {
        "onnx": str(raw),
        "optimized": str(compiled),
        "onnx_bytes": raw.stat().st_size,
        "parity_max_abs_diff": max(r["max_abs_diff"] for r in reports.values()),
        "parity_atol": cfg.export.parity_atol,
        "parity_rtol": cfg.export.parity_rtol,
    }


# 10 ------------------------------------------------------------------------------------------------
_ONNX_TYPES = {1: "FP32", 7: "INT64", 8: "BYTES", 11: "FP64", 6: "INT32", 9: "BOOL"}


def onnx_signature(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "datatype": _ONNX_TYPES.get(t.elem_type, str(t.elem_type)), "shape": dims})
        return out

    return {"inputs": io(m.graph.input), "outputs": io(m.graph.output)}


def _check_bars(cfg, metrics: dict) -> None:
    """Refuse to register a model whose holdout metrics miss a ``register.require`` bar (PermissionDenied
    naming each miss); nothing is written to the registry."""
    from fastml.pipeline.config import CLASSIFICATION_METRICS, REGRESSION_METRICS

    directions = CLASSIFICATION_METRICS if cfg.task == "classification" else REGRESSION_METRICS
    misses = []
    for metric, bar in cfg.register.require.items():
        value = metrics.get(metric)
        higher = directions[metric] == "maximize"
        if value is None or value != value or (value < bar if higher else value > bar):
            side = "below" if higher else "above"
            shown = value if value is None else round(float(value), 4)
            misses.append(f"holdout {metric} {shown} is {side} the bar {bar}")
    if misses:
        raise PermissionDenied("not registered: " + "; ".join(misses))


REFERENCE_MAX_ROWS = 50_000


def store_training_reference(ctx: Context, registry) -> dict:
    """The training rows of the model's input columns, stored in the registry's artifact store as Parquet:
    the drift reference ``fastml serve --monitor`` resolves for this version (a uniform sample of at most
    50,000 rows). Returns the tags that name it (``reference_sha256``, ``reference_bytes``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    idx = ctx.split[0]
    if len(idx) > REFERENCE_MAX_ROWS:
        idx = np.sort(np.random.default_rng(ctx.cfg.seed).choice(idx, REFERENCE_MAX_ROWS, replace=False))
    frame = ctx.frame.iloc[idx][list(ctx.spec.columns)]
    path = ctx.out("register") / "reference.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    stored = registry.artifacts.put(path)
    return {"reference_sha256": stored.sha256, "reference_bytes": str(stored.size_bytes)}


def stage_register(ctx: Context) -> dict:
    cfg = ctx.cfg
    out = ctx.out("register")
    if not cfg.register.enabled:
        (out / "registration.json").write_text(json.dumps({"registered": False}))
        return {"registered": False}
    _check_bars(cfg, json.loads((ctx.out("evaluate") / "metrics.json").read_text()))
    from fastml.registry import Registry

    registry = Registry()
    name = cfg.register.model_name or cfg.name
    parent = cfg.register.parent
    if parent is None:
        # Default lineage: the newest version already registered under this name.
        try:
            versions = registry.list_versions(name)
        except NotFound:
            versions = []
        parent = versions[-1].ref if versions else None
    exp = ctx.out("export")
    ingest = json.loads((ctx.out("ingest") / "ingest.json").read_text())
    metrics = json.loads((ctx.out("evaluate") / "metrics.json").read_text())
    cv = json.loads((ctx.out("cross_validate") / "cv.json").read_text())["summary"]
    metrics.update({f"cv_{k}_mean": v["mean"] for k, v in cv.items()})
    metrics.update({f"cv_{k}_std": v["std"] for k, v in cv.items()})
    metrics = {k: float(v) for k, v in metrics.items() if v == v}  # drop NaN (undefined scores)
    params = json.loads((ctx.out("train") / "params.json").read_text())
    tags = {
        **cfg.register.tags,
        "config_hash": cfg.config_hash(),
        "task": cfg.task,
        "family": cfg.model.family,
        "pipeline_run": ctx.run.run_id,
    }
    card = {
        "task": cfg.task,
        "family": cfg.model.family,
        "metric": cfg.metric_name,
        "training_rows": len(ctx.split[0]),
        "holdout_rows": len(ctx.split[1]),
        "data_source": ingest["source"],
        "features": ctx.spec.to_dict(),
        **cfg.register.model_card,
    }
    eval_results = json.loads((ctx.out("evaluate") / "eval_results.json").read_text())
    tags.update(store_training_reference(ctx, registry))
    mv = registry.register(
        name,
        exp / "model.optimized.onnx",
        bump=cfg.register.bump,
        metrics=metrics,
        params=dict(params),
        tags=tags,
        description=cfg.register.description or f"{cfg.model.family} trained by fastml pipeline run {ctx.run.run_id}",
        parent=parent,
        signature=onnx_signature(exp / "model.optimized.onnx"),
        model_card=card,
        source_artifact=exp / "model.onnx",
        run_id=ctx.run.run_id,
        dataset_fingerprint=ingest["dataset_fingerprint"],
        feature_refs=ingest.get("feature_refs"),
        eval_results=eval_results,
    )
    reg = {
        "registered": True,
        "name": mv.name,
        "version": str(mv.version),
        "ref": f"{mv.name}:{mv.version}",
        "parent": parent,
    }
    (out / "registration.json").write_text(json.dumps(reg, indent=2))
    return reg
