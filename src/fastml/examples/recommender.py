"""Real-time recommendations: an A/B test with a 90/10 split and sticky users, per-variant comparison,
winner promotion through the registry, then a canary of the next version rolled back automatically.

Each request scores one (user, item) pair: four user-taste features, four item features and two context
features; the label is whether the user clicked. Clicks follow the match between taste and item (their
product), so the planted outcomes are:

- 1.0.0 (incumbent) is a linear model on the raw features: it cannot see the taste x item match;
- 1.0.1 (candidate) adds the four taste x item products as derived features (inside its ONNX graph, so its
  inputs are unchanged): the better variant, which the A/B test must find;
- 1.0.2 (next) was trained on a click log whose labels were shuffled: the planted worse version, which the
  canary must roll back on its own once outcomes come back.

    fastml example run recommender [--quick] [--out DIR]
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastml.examples import ab
from fastml.examples.server import ServedExample, ServerProcess, fastml_cli, poll
from fastml.examples.steps import Run, Step, example_main

MODEL = "recsys"
DEPLOYMENT = "recommendations"
USER = [f"taste{i}" for i in range(4)]
ITEM = [f"item{i}" for i in range(4)]
CONTEXT = ["hour", "mobile"]
FEATURES = USER + ITEM + CONTEXT


@dataclass(frozen=True)
class Sizes:
    users: int = 3_000
    train_rows: int = 20_000
    requests_per_user: int = 2
    n_trials: int = 5
    canary_batch: int = 400


QUICK = Sizes(users=600, train_rows=8_000, requests_per_user=2, n_trials=1, canary_batch=200)


class World:
    """Users with a fixed taste vector, items drawn per request; clicks follow taste . item."""

    def __init__(self, users: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.taste = self.rng.normal(size=(users, 4)).astype(np.float32)

    def impressions(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(user_ids)
        item = self.rng.normal(size=(n, 4)).astype(np.float32)
        context = np.column_stack([self.rng.uniform(0, 1, n), self.rng.integers(0, 2, n)]).astype(np.float32)
        X = np.hstack([self.taste[user_ids], item, context]).astype(np.float32)
        match = (self.taste[user_ids] * item).sum(axis=1)
        y = (1.5 * match + 0.3 * context[:, 1] + self.rng.logistic(size=n) * 0.5 > 0).astype(np.int64)
        return X, y


def _pipeline(path: Path, n_trials: int, derived: bool, description: str) -> dict:
    features: dict = {"scaling": "standard"}
    if derived:
        features["derived"] = [{"name": f"match{i}", "op": "mul", "inputs": [USER[i], ITEM[i]]} for i in range(4)]
    return {
        "name": MODEL,
        "task": "classification",
        "seed": 0,
        "folds": 3,
        "data": {"path": str(path), "target": "clicked"},
        "features": features,
        "model": {"family": "logistic_regression"},
        "tune": {"n_trials": n_trials},
        "register": {"description": description, "tags": {"example": "recommender"}},
    }


class Recommender(ServedExample[Sizes]):
    def __init__(self, out_dir: Path, sizes: Sizes) -> None:
        super().__init__(out_dir, sizes)
        self.world = World(sizes.users)

    # ------------------------------------------------------------------------------------------ 1
    def train(self, s: Step) -> None:
        import pandas as pd

        from fastml.pipeline import train

        users = self.world.rng.integers(0, self.sizes.users, self.sizes.train_rows)
        X, y = self.world.impressions(users)
        data = self.out / "data"
        data.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(X, columns=FEATURES).assign(clicked=y)
        frame.to_csv(data / "clicks.csv", index=False)
        # The planted worse version's training log: clicks shuffled across impressions.
        frame.assign(clicked=self.world.rng.permutation(y)).to_csv(data / "clicks_shuffled.csv", index=False)
        n = self.sizes.n_trials
        self.v1 = train(_pipeline(data / "clicks.csv", n, False, "linear on raw features"), progress=False)
        self.v2 = train(_pipeline(data / "clicks.csv", n, True, "with taste x item matches"), progress=False)
        self.v3 = train(_pipeline(data / "clicks_shuffled.csv", n, True, "trained on a shuffled log"), progress=False)
        acc = {r.model_ref: r.metrics["accuracy"] for r in (self.v1, self.v2, self.v3)}
        for ref, a in acc.items():
            s.say(f"{ref}: holdout accuracy {a:.3f}")
        s.figure("holdout_accuracy", acc)
        s.file("click log", data / "clicks.csv")
        s.check(
            [r.model_ref for r in (self.v1, self.v2, self.v3)] == [f"{MODEL}:1.0.{i}" for i in range(3)],
            "three versions registered",
        )
        s.check(self.v2.metrics["accuracy"] > self.v1.metrics["accuracy"] + 0.05, "1.0.1 beats 1.0.0 on holdout")
        with _registry() as reg:
            reg.set_alias(MODEL, "champion", "1.0.0")

    # ------------------------------------------------------------------------------------------ 2
    def ab_test(self, s: Step) -> None:
        import tritonclient.http as httpclient

        path = self.out / "ab.toml"
        path.write_text(
            f"""[deployments.{DEPLOYMENT}]
[[deployments.{DEPLOYMENT}.variants]]
name = "incumbent"
model = "{MODEL}@champion"
weight_bp = 9000
[[deployments.{DEPLOYMENT}.variants]]
name = "candidate"
model = "{MODEL}:1.0.1"
weight_bp = 1000
"""
        )
        fastml_cli("deploy", "apply", str(path))
        self.server = ServerProcess([f"{MODEL}@champion"], self.out / "logs" / "serve.log", "--log-sample-rate", "1")
        self.client = httpclient.InferenceServerClient(self.server.url)
        poll(lambda: ab.infer(self.client, DEPLOYMENT, self.world.impressions(np.array([0]))[0], "probe", key="user-0"))
        seen: dict[str, set[str]] = {}
        ids, labels = [], []
        t0 = time.perf_counter()
        for rnd in range(self.sizes.requests_per_user):
            for u in range(self.sizes.users):
                X, y = self.world.impressions(np.array([u]))
                rid = f"ab-{rnd}-{u}"
                answer = ab.infer(self.client, DEPLOYMENT, X, rid, key=f"user-{u}").get_response()
                seen.setdefault(f"user-{u}", set()).add(answer["parameters"]["variant"])
                ids.append(rid)
                labels.append(int(y[0]))
        took_s = time.perf_counter() - t0
        fed = ab.feed_back(self._url(), DEPLOYMENT, ids, labels)
        sticky = all(len(v) == 1 for v in seen.values())
        share = sum("candidate" in v for v in seen.values()) / len(seen)
        s.figure("requests", len(ids))
        s.figure("requests_per_s", len(ids) / took_s)
        s.figure("candidate_user_share", share)
        s.check(sticky, f"sticky users: each of {len(seen)} users saw one variant on every request")
        s.check(0.06 < share < 0.14, f"the 90/10 split holds over users (candidate share {share:.3f})")
        s.check(fed["recorded"] == len(ids) and fed["unknown"] == 0, f"{len(ids)} click outcomes fed back")

    # ------------------------------------------------------------------------------------------ 3
    def compare(self, s: Step) -> None:
        analysis = ab.analyse(DEPLOYMENT, self.out / "reports" / "ab.html")
        rows = analysis.rows
        self.accuracy = {name: float(row["quality"]) for name, row in rows.items()}
        verdict = analysis.verdict("candidate")
        s.file("A/B report", analysis.html)
        for name, row in rows.items():
            s.say(f"{name}: {row['requests']} requests, {row['feedback']} outcomes, accuracy {row['quality']:.3f}")
            s.figure(f"accuracy_{name}", row["quality"])
            s.figure(f"outcomes_{name}", row["feedback"])
        s.figure("srm_p_value", analysis.srm.get("p_value"))
        s.figure("verdict", verdict)
        s.check(not analysis.srm.get("flagged", False), "no sample-ratio mismatch: the split is sound")
        s.check(rows["candidate"]["quality"] > rows["incumbent"]["quality"], "the candidate clicks-accuracy is higher")
        s.check(verdict == "winner", "the A/B test finds the planted better variant (1.0.1) the winner")

    # ------------------------------------------------------------------------------------------ 4
    def promote(self, s: Step) -> None:
        fastml_cli("experiment", "promote", DEPLOYMENT, "candidate", "--reason", "A/B winner on clicks")
        with _registry() as reg:
            rid = reg.request_transition(f"{MODEL}:1.0.1", "production", actor="ana", reason="A/B winner")
            reg.approve(rid, reviewer="bo", comment="A/B report reviewed")
            reg.approve(rid, reviewer="cy", comment="agreed")
            reg.set_alias(MODEL, "champion", "1.0.1")
            prod = reg.resolve(f"{MODEL}@production")
            champion = reg.resolve(f"{MODEL}@champion")
        code = self.server.stop() if self.server else 0
        self.server = None
        s.figure("production", prod.ref)
        s.check(prod.ref == f"{MODEL}:1.0.1", f"{MODEL}@production is 1.0.1 after two approvals")
        s.check(champion.ref == f"{MODEL}:1.0.1", f"{MODEL}@champion follows the winner")
        s.check("weight_bp = 10000" in fastml_cli("deploy", "show").stdout, "the winner takes all the traffic")
        s.check(code == 0, "server drained and exited 0")

    # ------------------------------------------------------------------------------------------ 5
    def canary(self, s: Step) -> None:
        from fastml.examples import pictures

        result = asyncio.run(self._canary())
        picture = pictures.ab_and_canary(
            self.out / "reports" / "ab_and_canary.png",
            self.accuracy,
            [h["candidate_pct"] for h in result["history"]],
            [h["action"] for h in result["history"]],
        )
        s.file("A/B and canary picture", picture)
        s.figure("history", [f"{h['action']}@{h['candidate_pct']:g}%" for h in result["history"]])
        s.figure("state", result["state"])
        s.figure("rollback_guards", result["guards"])
        s.figure("final_weights_bp", result["weights"])
        s.check(result["stepped"], "the canary sent 1.0.2 its first 10 % of traffic")
        s.check(result["state"] == "rolled_back", "the canary of the planted worse 1.0.2 rolled back on its own")
        s.check("quality" in result["guards"], "the quality guard (sequential test on fed-back clicks) tripped")
        s.check(
            result["weights"] == {"stable": 10000, "next": 0}, "rolled back during its first step: all traffic on 1.0.1"
        )
        with _registry() as reg:
            s.check(reg.resolve(f"{MODEL}@production").ref == f"{MODEL}:1.0.1", "production still 1.0.1")
        from fastml.governance.audit import AuditLog

        actions = [e["action"] for e in AuditLog().entries()]
        s.figure("audit_actions", sorted(set(actions)))
        s.check("canary.rollback" in actions, "the rollback is in the audit log")
        s.check(AuditLog().verify().ok, "audit log hash chain verifies")

    async def _canary(self) -> dict:
        from fastml.serving import feedback
        from fastml.serving.canary import CanaryController, CanaryPolicy
        from fastml.serving.dataplane import DataPlane, InferRequest
        from fastml.serving.deployments import DeploymentManager
        from fastml.serving.manager import ModelManager

        manager = ModelManager([], overrides={"log_sample_rate": 1.0})
        plane = DataPlane(manager)
        plane.deployments = deployments = DeploymentManager(manager)
        await deployments.apply_text(
            f"""[deployments.canary]
[[deployments.canary.variants]]
name = "stable"
model = "{MODEL}@production"
weight_bp = 10000
[[deployments.canary.variants]]
name = "next"
model = "{MODEL}:1.0.2"
weight_bp = 0
"""
        )
        now = [0.0]
        # Latency guards loose: this runs on a shared machine; the planted fault is in quality.
        policy = CanaryPolicy(
            steps_pct=(10, 25, 50, 100),
            interval_s=60,
            interval_requests=60,  # a step lasts until 60 candidate requests, so outcomes can judge it
            min_requests=20,
            min_feedback=30,
            failures_to_rollback=2,
            max_p99_ratio=50,
            min_slowdown_ratio=50,
        )
        canary = CanaryController(
            deployments, "canary", "stable", "next", policy, promote_ref=f"{MODEL}:1.0.2", clock=lambda: now[0]
        )
        canary.start()
        history, stepped, n, guards = [], False, 0, []
        try:
            for _ in range(12):
                if canary.state != "running":
                    break
                ids, labels = [], []
                for _ in range(self.sizes.canary_batch):
                    u = int(self.world.rng.integers(0, self.sizes.users))
                    X, y = self.world.impressions(np.array([u]))
                    rid = f"canary-{n}"
                    n += 1
                    await plane.infer(InferRequest("canary", {"input": X}, id=rid, parameters={"routing_key": rid}))
                    ids.append(rid)
                    labels.append(int(y[0]))
                body = json.dumps([{"id": i, "label": v} for i, v in zip(ids, labels, strict=True)]).encode()
                feedback.handle_http(plane, "canary", body)  # what POST /v2/models/canary/feedback runs
                now[0] += 60
                result = canary.check()
                stepped = stepped or deployments.variant_stats("canary")["next"]["requests"] > 0
                history.append({"action": result.action, "candidate_pct": result.candidate_pct})
                if result.action == "rollback":
                    guards = sorted(g.name for g in result.guards if not g.ok)
                print(
                    f"  canary check: {result.action} at {result.candidate_pct:g} %"
                    + (f" ({result.reason})" if result.reason else ""),
                    flush=True,
                )
            stats = deployments.variant_stats("canary")
            weights = {name: int(v["weight_bp"]) for name, v in stats.items()}
        finally:
            await deployments.stop()
        return {"state": canary.state, "history": history, "stepped": stepped, "weights": weights, "guards": guards}


def _registry():
    from fastml.registry.registry import Registry

    return Registry()


def run(out_dir: str | os.PathLike, *, quick: bool = False) -> dict:
    """Run the recommender example; returns the summary (also written to ``<out_dir>/summary.json``)."""
    rec = Recommender(Path(out_dir).absolute(), QUICK if quick else Sizes())
    run = Run("recommender", out_dir, quick=quick)
    try:
        run.step("train three versions", rec.train)
        run.step("A/B 90/10 with sticky users", rec.ab_test)
        run.step("per-variant comparison", rec.compare)
        run.step("promote the winner through the registry", rec.promote)
        run.step("canary of the next version", rec.canary)
    finally:
        rec.close()
        run.finish()
    return run.summary()


def main(argv: list[str] | None = None) -> int:
    return example_main("recommender", __doc__ or "", run, argv)
