"""Healthcare diagnosis: an accuracy bar the pipeline enforces, HIPAA with PHI detection on the input schema,
SHAP explanations served with each prediction on request, human review of low-confidence predictions, and the
audit trail of all of it verified at the end.

The data is a synthetic EHR extract: six direct or quasi identifiers (MRN, name, SSN, date of birth, ZIP,
phone) beside six clinical measurements, and a diagnosis. The planted outcomes:

- an extract whose diagnoses were mis-transcribed for a quarter of the patients trains a model under the
  0.95 holdout-accuracy bar, and the pipeline refuses to register it;
- the identifiers are found by name and by value in the input schema, so HIPAA fails on the raw extract and
  passes on the six clinical features the model is trained on.

Explanations: the model is linear in log-odds, so each feature's SHAP value against the average patient is
exactly ``w_j (x_j - mean_j)``. The served graph computes them beside the prediction (output
``shap_values``, returned when a request asks for it), and the run checks them against kernel SHAP over
ONNX Runtime (:class:`fastml.monitoring.OnnxExplainer`).

    fastml example run healthcare [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastml.examples.server import ServedExample, ServerProcess, fastml_cli
from fastml.examples.steps import Run, Step, example_main, registered_ref

MODEL = "diagnosis"
BAR = 0.95
CONFIDENCE_THRESHOLD = 0.9
CLINICAL = ["age", "bmi", "glucose", "hba1c", "systolic_bp", "cholesterol"]
IDENTIFIERS = ["mrn", "patient_name", "ssn", "date_of_birth", "zip_code", "phone"]
FIRST = ["Maria", "James", "Aiko", "Omar", "Lena", "Kwame", "Sofia", "Ivan", "Priya", "Tom"]
LAST = ["Lopez", "Carter", "Tanaka", "Haddad", "Novak", "Mensah", "Rossi", "Petrov", "Shah", "Reed"]


@dataclass(frozen=True)
class Sizes:
    patients: int = 6_000
    n_trials: int = 5
    served: int = 400


QUICK = Sizes(patients=3_000, n_trials=1, served=120)

CARD = {
    "name": MODEL,
    "description": "Logistic model of type 2 diabetes from six routine clinical measurements.",
    "intended_use": "Flag patients for a confirmatory HbA1c test; a clinician reviews every uncertain flag.",
    "domain": "healthcare",
    "decision_type": "human_in_the_loop",
    "jurisdictions": ["US"],
    "data_categories": ["health"],
    "personal_data": True,
    "special_category_data": ["data concerning health"],
    "purpose": "Treatment: decide who gets a confirmatory test.",
    "retention_days": 2190,
    "automated_decision_making": False,
    "explanation_method": "exact SHAP values against the average patient, served with every prediction",
    "human_oversight": {"role": "attending physician", "can_override": True},
    "hipaa": {"covered_entity": True, "business_associate": False, "purpose": "treatment", "deidentification": "none"},
    "security": {"access_control": "clinical network only", "encryption_at_rest": True, "audit_logging": True},
    # The six clinical features the model is trained on: the HIPAA rules scan them (without a schema they
    # cannot pass); the raw extract with its identifiers is assessed separately in the hipaa step.
    "training_data": {
        "schema": [{"name": c, "type": "float"} for c in CLINICAL],
        "source": "synthetic EHR extract (fastml example)",
    },
    # The privacy officer's sign-offs for what needs a person's judgement (a fail cannot be signed off).
    "reviews": {
        "HIPAA-502b": "privacy officer, 2026-12-01: age is a needed risk factor; ages are capped at 85 in the extract",
        "HIPAA-514b": "privacy officer, 2026-12-01: identified PHI used for treatment (164.506); no de-identification",
    },
}


def make_extract(n: int, seed: int, mistranscribed: float = 0.0):
    """The EHR extract as a DataFrame: identifiers, clinical measurements and ``diagnosis``."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    clinical = {
        "age": rng.uniform(20, 85, n),
        "bmi": rng.normal(27, 5, n),
        "glucose": rng.normal(110, 30, n),
        "hba1c": rng.normal(6.0, 1.0, n),
        "systolic_bp": rng.normal(130, 15, n),
        "cholesterol": rng.normal(200, 35, n),
    }
    z = {k: (v - v.mean()) / v.std() for k, v in clinical.items()}
    risk = 2.0 * z["hba1c"] + 1.5 * z["glucose"] + 0.6 * z["bmi"] + 0.4 * z["age"]
    diagnosis = (risk + rng.normal(0, 0.3, n) > 0.5).astype(np.int64)
    if mistranscribed:
        flip = rng.random(n) < mistranscribed
        diagnosis = np.where(flip, 1 - diagnosis, diagnosis)
    ids = np.arange(n)
    frame = pd.DataFrame(
        {
            "mrn": [f"MRN{4800000 + i:07d}" for i in ids],
            "patient_name": [f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}" for i in ids],
            "ssn": [f"{100 + i % 800:03d}-{10 + i % 89:02d}-{1000 + i % 8999:04d}" for i in ids],
            "date_of_birth": [f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in ids],
            "zip_code": [f"{60600 + i % 90:05d}" for i in ids],
            "phone": [f"(312) 555-{i % 10000:04d}" for i in ids],
            **{k: np.round(v, 2) for k, v in clinical.items()},
            "diagnosis": diagnosis,
        }
    )
    return frame


def _pipeline(path: Path, n_trials: int) -> dict:
    return {
        "name": MODEL,
        "task": "classification",
        "seed": 0,
        "folds": 3,
        "data": {"path": str(path), "target": "diagnosis", "drop": IDENTIFIERS},
        "model": {"family": "logistic_regression"},
        "tune": {"n_trials": n_trials},
        "register": {"require": {"accuracy": BAR}, "tags": {"example": "healthcare"}},
    }


class Healthcare(ServedExample[Sizes]):
    def __init__(self, out_dir: Path, sizes: Sizes) -> None:
        super().__init__(out_dir, sizes)
        # A run can share its FASTML_HOME with earlier runs: request ids carry this run's tag (the review
        # queue holds one item per model and request id for good), and the audit and review figures count
        # this run's entries only.
        self.run_tag = uuid.uuid4().hex[:8]
        self.audit_mark = _audit_length()

    # ------------------------------------------------------------------------------------------ 1
    def generate(self, s: Step) -> None:
        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.clean = make_extract(self.sizes.patients, seed=0)
        self.clean_csv = data / "ehr_extract.csv"
        self.clean.to_csv(self.clean_csv, index=False)
        self.degraded_csv = data / "ehr_extract_mistranscribed.csv"
        make_extract(self.sizes.patients, seed=0, mistranscribed=0.25).to_csv(self.degraded_csv, index=False)
        self.patients = make_extract(self.sizes.served, seed=11)  # today's patients
        s.file("EHR extract", self.clean_csv)
        s.figure("patients", len(self.clean))
        s.figure("diagnosed_share", float(self.clean["diagnosis"].mean()))
        s.check(set(IDENTIFIERS + CLINICAL) <= set(self.clean.columns), "identifiers and clinical columns present")

    # ------------------------------------------------------------------------------------------ 2
    def hipaa(self, s: Step) -> None:
        from fastml.governance.compliance import assess
        from fastml.governance.pii import scan
        from fastml.governance.report import build_report, to_html

        schema = [{"name": c, "type": "string" if c in IDENTIFIERS else "float"} for c in self.clean.columns]
        sample = {c: self.clean[c].astype(str).head(200).tolist() for c in self.clean.columns}
        found = scan(schema, sample)
        phi = sorted({f.column for f in found.findings if f.safe_harbor})
        raw = assess(CARD, schema=schema, sample=sample, rulesets=["hipaa"])
        features = [{"name": c, "type": "float"} for c in CLINICAL]
        model_input = assess(CARD, schema=features, sample={c: sample[c] for c in CLINICAL}, rulesets=["hipaa"])
        out = self.out / "reports"
        out.mkdir(parents=True, exist_ok=True)
        (out / "hipaa_input_schema.html").write_text(to_html(build_report(compliance=raw, model=f"{MODEL} (extract)")))
        (out / "hipaa_model_input.html").write_text(to_html(build_report(compliance=model_input, model=MODEL)))
        s.file("HIPAA report, raw extract", out / "hipaa_input_schema.html")
        s.file("HIPAA report, model input", out / "hipaa_model_input.html")
        s.figure("phi_columns", phi)
        s.figure("verdict_raw_extract", raw.verdict)
        s.figure("verdict_model_input", model_input.verdict)
        s.figure("HIPAA-502b_raw", raw.finding("HIPAA-502b").verdict)
        s.check(set(IDENTIFIERS) <= set(phi), f"PHI detected in the input schema: {phi}")
        s.check(raw.finding("HIPAA-502b").verdict == "fail", "HIPAA-502b fails if the identifiers were features")
        s.check(model_input.verdict == "pass", "HIPAA passes on the six clinical features the model uses")

    # ------------------------------------------------------------------------------------------ 3
    def refuse(self, s: Step) -> None:
        from fastml.errors import NotFound, PermissionDenied
        from fastml.governance.audit import AuditLog
        from fastml.pipeline import train
        from fastml.registry.registry import Registry

        def versions() -> list[str]:
            with Registry() as reg:
                try:
                    return [mv.version for mv in reg.list_versions(MODEL)]
                except NotFound:
                    return []

        before = versions()
        try:
            train(_pipeline(self.degraded_csv, self.sizes.n_trials), progress=False)
            refused = None
        except PermissionDenied as exc:
            refused = str(exc)
        s.figure("refusal", refused)
        s.check(refused is not None and f"below the bar {BAR}" in refused, f"the pipeline refused: {refused}")
        s.check(versions() == before, "nothing was registered")
        AuditLog().append(
            "pipeline.register.refused", target=MODEL, details={"reason": refused, "data": self.degraded_csv.name}
        )

    # ------------------------------------------------------------------------------------------ 4
    def train(self, s: Step) -> None:
        from fastml.pipeline import train

        self.result = train(_pipeline(self.clean_csv, self.sizes.n_trials), progress=False)
        acc = self.result.metrics["accuracy"]
        s.figure("holdout_accuracy", acc)
        s.figure("model", registered_ref(self.result))
        s.check(acc >= BAR, f"holdout accuracy {acc:.4f} >= {BAR}: registered as {registered_ref(self.result)}")

    # ------------------------------------------------------------------------------------------ 5
    def explainable(self, s: Step) -> None:
        from fastml.monitoring.explain import OnnxExplainer
        from fastml.registry.registry import Registry

        X = self.clean[CLINICAL].to_numpy(np.float32)
        mean = X.mean(axis=0, keepdims=True).astype(np.float32)
        with Registry() as reg:
            base_path = reg.artifact_path(registered_ref(self.result))
        weights, base_logit, max_err = _linear_logit(base_path, mean, X[:500])
        s.figure("max_affine_error_logit", max_err)
        s.check(max_err < 1e-3, "the model is affine in log-odds (so w_j (x_j - mean_j) are its exact SHAP values)")
        path = self.out / "diagnosis_explained.onnx"
        _add_shap_output(base_path, path, mean[0], weights)
        import onnxruntime as ort

        base_sess = ort.InferenceSession(str(base_path), providers=["CPUExecutionProvider"])
        rows = X[:500][~np.isnan(_logit(base_sess, X[:500]))][:8]  # rows whose log-odds float32 can tell
        kernel = OnnxExplainer(str(base_path), background=mean, feature_names=CLINICAL, link="logit")
        reference = kernel.shap_values(rows).values
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        served = sess.run(["shap_values"], {"input": rows})[0]
        diff = float(np.abs(served - reference).max())
        s.figure("max_abs_diff_vs_kernel_shap", diff)
        s.check(diff < 1e-3, f"served SHAP values equal kernel SHAP over ONNX Runtime (max difference {diff:.2e})")
        with Registry() as reg:
            mv = reg.register(
                MODEL,
                path,
                parent=registered_ref(self.result),
                metrics=self.result.metrics,
                tags={"explains": "shap_values", "shap_base_logit": f"{base_logit:.6f}", "example": "healthcare"},
                model_card=dict(CARD, metrics={"accuracy": round(float(self.result.metrics["accuracy"]), 4)}),
                actor="healthcare-example",
                description="diagnosis with exact SHAP values (log-odds, against the average patient)",
            )
        self.ref = mv.ref
        self.base_logit = base_logit
        s.figure("model", mv.ref)
        s.check(
            mv.parent == registered_ref(self.result),
            f"{mv.ref} registered as the child of {registered_ref(self.result)}",
        )

    # ------------------------------------------------------------------------------------------ 6
    def serve(self, s: Step) -> None:
        import tritonclient.http as httpclient

        from fastml.governance.review import ReviewQueue

        self.server = ServerProcess([self.ref], self.out / "logs" / "serve.log")
        self.client = httpclient.InferenceServerClient(self.server.url)
        name = MODEL
        X = self.patients[CLINICAL].to_numpy(np.float32)
        queued, additive_err, plain_outputs, pictured = 0, 0.0, None, None
        mine: set[int] = set()
        with ReviewQueue() as queue:
            for i in range(len(X)):
                rid = f"patient-{i}-{self.run_tag}"
                explain = i > 0  # the first request asks for the prediction only
                wanted = ["label", "probabilities"] + (["shap_values"] if explain else [])
                inp = httpclient.InferInput("input", [1, len(CLINICAL)], "FP32")
                inp.set_data_from_numpy(X[i : i + 1])
                outs = [httpclient.InferRequestedOutput(o) for o in wanted]
                res = self.client.infer(name, [inp], outputs=outs, request_id=rid)
                p = res.as_numpy("probabilities")[0]
                confidence = float(p.max())
                phi: np.ndarray | None = None
                if not explain:
                    plain_outputs = sorted(o["name"] for o in res.get_response()["outputs"])
                else:
                    phi = res.as_numpy("shap_values")[0]
                    logit = float(_log_odds(p)[0])
                    if logit == logit:  # not saturated
                        additive_err = max(additive_err, abs(self.base_logit + float(phi.sum()) - logit))
                if phi is not None and pictured is None and confidence < CONFIDENCE_THRESHOLD:
                    from fastml.examples import pictures

                    pictured = pictures.explanation(
                        self.out / "reports" / "explanation.png",
                        CLINICAL,
                        phi,
                        f"{rid}: p(diabetes) {p[1]:.2f}, sent to review",
                    )
                    s.file("explanation picture", pictured)
                # Every prediction is judged on its confidence, explained or not (the reason then names the
                # two largest contributions when the request asked for them).
                if confidence < CONFIDENCE_THRESHOLD:
                    reason = f"confidence {confidence:.2f} < {CONFIDENCE_THRESHOLD}"
                    if phi is not None:
                        top = np.argsort(-np.abs(phi))[:2]
                        reason += "; " + ", ".join(f"{CLINICAL[j]} {phi[j]:+.2f}" for j in top)
                    item = queue.add(
                        MODEL,
                        rid,
                        int(res.as_numpy("label")[0]),
                        confidence,
                        features=dict(zip(CLINICAL, X[i].tolist(), strict=True)),
                        reason=reason,
                        actor="diagnosis-service",
                    )
                    queued += 1
                    mine.add(item.id)
            self.open_items = [item for item in queue.list() if item.id in mine]
        s.figure("predictions", len(X))
        s.figure("queued_for_review", queued)
        s.figure("max_additivity_error_logit", additive_err)
        s.check(plain_outputs == ["label", "probabilities"], "without a request for it, no explanation is computed")
        s.check(additive_err < 1e-3, "each served explanation adds up to the prediction's log-odds")
        s.check(0 < queued < len(X) // 2, f"{queued} low-confidence predictions routed to the review queue")
        s.check(len(self.open_items) == queued, "the queue holds every routed prediction")

    # ------------------------------------------------------------------------------------------ 7
    def review(self, s: Step) -> None:
        items = self.open_items
        listed = json.loads(fastml_cli("review", "list", "--json").stdout)
        s.check([i["id"] for i in listed] == [i.id for i in items], "fastml review list shows the open items")
        override, confirm = items[0], items[1:]
        truth = int(self.patients["diagnosis"].iloc[int(override.request_id.split("-")[1])])
        fastml_cli(
            "review", "resolve", str(override.id), "--decision", "overridden", "--reviewer", "dr-okafor",
            "--label", str(truth), "--note", "confirmatory HbA1c ordered",
        )  # fmt: skip
        if confirm:
            ids = [str(i.id) for i in confirm]
            fastml_cli("review", "resolve", *ids, "--decision", "confirmed", "--reviewer", "dr-okafor")
        left = json.loads(fastml_cli("review", "list", "--json").stdout)
        routed = {i.id for i in items}  # this run's items (the queue keeps earlier runs' too)
        everything = json.loads(fastml_cli("review", "list", "--status", "all", "--json").stdout)
        done = [d for d in everything if d["id"] in routed]
        s.figure("resolved", len(done))
        s.figure("overridden", sum(d["status"] == "overridden" for d in done))
        s.check(not left, "no item left open")
        s.check(len(done) == len(items), "every routed prediction resolved")
        s.check(all(d["reviewer"] == "dr-okafor" for d in done), "every item resolved by a named reviewer")

    # ------------------------------------------------------------------------------------------ 8
    def audit(self, s: Step) -> None:
        from fastml.governance.audit import AuditLog

        code = self.server.stop() if self.server else 0
        self.server = None
        s.check(code == 0, "server drained and exited 0")
        fastml_cli("audit", "import-registry")  # the registry's own events join the chain
        log = AuditLog()
        verdict = log.verify()
        actions = [e["action"] for e in log.entries()][self.audit_mark :]  # this run's entries
        counts = {a: actions.count(a) for a in sorted(set(actions))}
        export = self.out / "reports" / "audit.jsonl"
        fastml_cli("audit", "export", "--format", "jsonl", "--out", str(export))
        s.file("audit trail", export)
        s.figure("audit_entries", verdict.entries)
        s.figure("actions", counts)
        s.check(verdict.ok, f"audit hash chain verifies ({verdict.entries} entries, head {verdict.head_hash[:12]})")
        s.check(counts.get("pipeline.register.refused") == 1, "the refused registration is on record")
        s.check(any(a.startswith("registry.") for a in actions), "the registrations are on record")
        n = len(self.open_items)
        s.check(counts.get("review.enqueue") == n and counts.get("review.resolve") == n, "every review on record")


def _audit_length() -> int:
    """How many entries the audit log holds now (a run counts the entries after this mark as its own)."""
    from fastml.governance.audit import AuditLog

    return sum(1 for _ in AuditLog().entries())


# Float32 probabilities pin the log-odds down only away from 0 and 1: rows whose smaller probability is under
# this are left out of the affine and additivity checks.
MIN_PROBABILITY = 1e-3


def _logit(sess, X: np.ndarray) -> np.ndarray:
    """Log-odds of the positive class; NaN where a probability is too close to 0 or 1 to tell."""
    p = sess.run(["probabilities"], {"input": X})[0].astype(np.float64)
    return _log_odds(p)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.atleast_2d(p)
    with np.errstate(divide="ignore"):
        out = np.log(p[:, 1]) - np.log(p[:, 0])
    out[p.min(axis=1) < MIN_PROBABILITY] = np.nan
    return out


def _linear_logit(path, mean: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The model's log-odds as ``b + w . x``, read off by finite differences around the mean, and the
    largest deviation from that affine form over ``X``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = X.std(axis=0).astype(np.float64)
    probes = np.repeat(mean.astype(np.float64), len(step), axis=0) + np.diag(step)
    base = float(_logit(sess, mean)[0])
    weights = (_logit(sess, probes.astype(np.float32)) - base) / step
    predicted = base + (X.astype(np.float64) - mean) @ weights
    return weights.astype(np.float32), base, float(np.nanmax(np.abs(predicted - _logit(sess, X))))


def _add_shap_output(src, dst: Path, mean: np.ndarray, weights: np.ndarray) -> None:
    """Copy the ONNX graph at ``src`` with one more output: ``shap_values = (input - mean) * weights``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    input_name = graph.input[0].name
    graph.initializer.extend(
        [
            numpy_helper.from_array(mean.astype(np.float32), "shap_mean"),
            numpy_helper.from_array(weights.astype(np.float32), "shap_weights"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", [input_name, "shap_mean"], ["shap_centered"], name="shap_center"),
            helper.make_node("Mul", ["shap_centered", "shap_weights"], ["shap_values"], name="shap_scale"),
        ]
    )
    graph.output.append(helper.make_tensor_value_info("shap_values", TensorProto.FLOAT, [None, len(weights)]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def run(out_dir: str | os.PathLike, *, quick: bool = False) -> dict:
    """Run the healthcare example; returns the summary (also written to ``<out_dir>/summary.json``)."""
    hc = Healthcare(Path(out_dir).absolute(), QUICK if quick else Sizes())
    run = Run("healthcare", out_dir, quick=quick)
    try:
        run.step("generate the EHR extract", hc.generate)
        run.step("HIPAA: PHI detection on the input schema", hc.hipaa)
        run.step("the pipeline refuses a model under the bar", hc.refuse)
        run.step(f"train and register over the {BAR} bar", hc.train)
        run.step("explanations in the served graph", hc.explainable)
        run.step("serve with explanations; route low confidence", hc.serve)
        run.step("a person resolves the review queue (CLI)", hc.review)
        run.step("audit trail verified", hc.audit)
    finally:
        hc.close()
        run.finish()
    return run.summary()


def main(argv: list[str] | None = None) -> int:
    return example_main("healthcare", __doc__ or "", run, argv)
