"""The A/B-test pieces the examples share, each done the way a user of a running ``fastml serve`` does it:
one row inferred through ``tritonclient`` with a routing key, outcomes fed back over HTTP by request id, and
the experiment's analysis read from ``fastml experiment status``."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastml.examples.server import fastml_cli

FEEDBACK_TIMEOUT_S = 120.0


def infer(
    client: Any,
    deployment: str,
    rows: np.ndarray,
    request_id: str,
    *,
    key: str | None = None,
    variant: str | None = None,
) -> Any:
    """One ``tritonclient.http`` inference of ``rows`` (FP32 input ``input``) on ``deployment``.

    Args:
        client: a ``tritonclient.http.InferenceServerClient``.
        key: the routing key (a user id: the same key always reaches the same variant).
        variant: a variant to address directly, bypassing the split (a readiness probe).
    """
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    params = {}
    if key is not None:
        params["routing_key"] = key
    if variant is not None:
        params["variant"] = variant
    return client.infer(deployment, [inp], request_id=request_id, parameters=params or None)


def feed_back(url: str, deployment: str, ids: list[str], labels) -> dict:
    """POST the true ``labels`` of requests ``ids`` to ``deployment``'s feedback endpoint on the server at
    ``url`` (``host:port``); returns its answer (``recorded``, ``unknown``, ...)."""
    body = json.dumps([{"id": i, "label": int(v)} for i, v in zip(ids, labels, strict=True)]).encode()
    req = urllib.request.Request(
        f"http://{url}/v2/models/{deployment}/feedback", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=FEEDBACK_TIMEOUT_S) as resp:
        return json.loads(resp.read())


@dataclass(frozen=True)
class Analysis:
    """``fastml experiment status`` of one deployment, judged on the fed-back labels.

    Attributes:
        doc: the command's JSON document. rows: its variants by name. html: the HTML report it wrote.
    """

    doc: dict
    rows: dict[str, dict]
    html: Path

    def verdict(self, variant: str) -> str:
        """The experiment's verdict on ``variant`` against the control (``winner``, ...)."""
        return str(self.doc["verdicts"][variant])

    @property
    def srm(self) -> dict:
        """The sample-ratio-mismatch test (``p_value``, ``flagged``); empty when there is none."""
        return self.doc.get("srm") or {}


def analyse(deployment: str, html: Path) -> Analysis:
    """Run ``fastml experiment status`` on ``deployment`` (quality = accuracy on the fed-back labels),
    writing its HTML report to ``html``."""
    html.parent.mkdir(parents=True, exist_ok=True)
    out = fastml_cli("experiment", "status", deployment, "--output", "label", "--json", "--html", str(html)).stdout
    doc = json.loads(out)
    return Analysis(doc, {v["name"]: v for v in doc["variants"]}, html)
