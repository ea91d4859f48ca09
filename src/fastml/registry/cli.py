"""``fastml registry ...``: register, list, show, request, approve, reject, promote, alias, compare,
lineage, history, verify (plus requests, delete, events). Read commands take ``--json``."""

from __future__ import annotations

import argparse
import json
import sys


def _count(text: str) -> int:
    """An argparse type: an int >= 0 (a negative --limit or --after-id was taken and read nothing)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("registry", help="model registry: versions, stages, approvals, lineage")
    p.add_argument(
        "--url",
        default=None,
        help="SQLAlchemy URL of the registry (default: $FASTML_REGISTRY_URL or $FASTML_HOME/registry.db)",
    )
    sub = p.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)

    def cmd(name, fn, help_, *, read=False):
        c = sub.add_parser(name, help=help_, description=help_)
        c.set_defaults(handler=fn)
        if read:
            c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return c

    def actor(c, flag="--actor"):
        c.add_argument(flag, default=None, help="who does this (default: $FASTML_USER or the login name)")

    c = cmd("register", _register, "register a new version of a model (copies the artifact in)", read=True)
    c.add_argument("name")
    c.add_argument("artifact", help="ONNX file")
    c.add_argument("--version", default=None, help="semantic version (default: bump from the latest)")
    c.add_argument("--bump", choices=["major", "minor", "patch"], default="patch")
    c.add_argument("--metric", action="append", default=[], metavar="NAME=NUMBER")
    c.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="VALUE parsed as JSON when it can be"
    )
    c.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--description", default="")
    c.add_argument("--parent", default=None, metavar="REF")
    c.add_argument("--model-card", default=None, metavar="FILE.json")
    c.add_argument("--signature", default=None, metavar="FILE.json")
    c.add_argument("--eval-results", default=None, metavar="FILE.json")
    c.add_argument("--source-artifact", default=None, metavar="FILE")
    c.add_argument("--run-id", default=None)
    c.add_argument("--dataset-fingerprint", default=None)
    c.add_argument("--feature-ref", action="append", default=[], metavar="GROUP:FEATURE")
    actor(c)

    c = cmd("list", _list, "list models, or the versions of one model", read=True)
    c.add_argument("name", nargs="?")
    c.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--stage", default=None)

    c = cmd("show", _show, "show one version (any reference: name, name:1.2.0, name@production, name@alias)", read=True)
    c.add_argument("ref")

    c = cmd("request", _request, "request a move into a protected stage (needs approvals)", read=True)
    c.add_argument("ref")
    c.add_argument("stage")
    c.add_argument("--reason", default="")
    actor(c)

    c = cmd("approve", _approve, "approve a transition request", read=True)
    c.add_argument("request_id", type=int)
    c.add_argument("--comment", default="")
    c.add_argument(
        "--key",
        default=None,
        metavar="PATH",
        help="sign the approval with this Ed25519 private key (ssh-keygen -t ed25519); needs --reviewer",
    )
    actor(c, "--reviewer")

    c = cmd("signers", _signers, "set the reviewers' allowed signing keys (OpenSSH allowed_signers lines)")
    c.add_argument("file", help="lines 'reviewer ssh-ed25519 AAAA...'")
    c.add_argument("--require", action="store_true", help="refuse unsigned approvals from now on")

    c = cmd("reject", _reject, "reject (and close) a transition request", read=True)
    c.add_argument("request_id", type=int)
    c.add_argument("--comment", required=True)
    actor(c, "--reviewer")

    c = cmd("requests", _requests, "list transition requests", read=True)
    c.add_argument("--status", default="open", help="open|approved|rejected|stale|all")
    c.add_argument("--name", default=None)

    c = cmd(
        "promote", _promote, "move a version into an unprotected stage (protected ones need request/approve)", read=True
    )
    c.add_argument("ref")
    c.add_argument("stage")
    c.add_argument("--reason", default="")
    actor(c)

    c = cmd("alias", _alias, "point NAME@ALIAS at VERSION (or delete it with --delete)", read=True)
    c.add_argument("name")
    c.add_argument("alias")
    c.add_argument("version", nargs="?")
    c.add_argument("--delete", action="store_true")
    actor(c)

    c = cmd("delete", _delete, "delete a version (refused while referenced or in production)")
    c.add_argument("ref")
    c.add_argument("--reason", default="")
    actor(c)

    c = cmd(
        "compare",
        _compare,
        "compare versions on a metric (with a significance test when eval results exist)",
        read=True,
    )
    c.add_argument("refs", nargs="+")
    c.add_argument("--metric", required=True)
    c.add_argument("--lower-is-better", action="store_true")
    c.add_argument("--alpha", type=float, default=0.05)

    c = cmd("lineage", _lineage, "ancestors and descendants of a version", read=True)
    c.add_argument("ref")

    c = cmd(
        "history", _history, "changes of a model and its state at a moment (--at 2026-11-29 or an ISO time)", read=True
    )
    c.add_argument("name")
    c.add_argument("--at", default=None)

    c = cmd("events", _events, "the append-only event log", read=True)
    c.add_argument("--after-id", type=_count, default=0)
    c.add_argument("--limit", type=_count, default=100)

    cmd("verify", _verify, "check every artifact against its recorded SHA-256 (exit 1 on problems)", read=True)


# ---------------------------------------------------------------------------- helpers
def _registry(args):
    from fastml.governance import attach_configured
    from fastml.registry import Registry

    reg = Registry(args.url)
    # This module is part of the `fastml` command (the CLI layer may use every library), so promotions
    # made from the command line pass the same governance gates and reach the same audit log as the API
    # when $FASTML_HOME/governance/policy.toml exists; the registry library itself never imports governance.
    attach_configured(reg)
    return reg


def _pairs(items: list[str], what: str, *, numbers: bool = False, json_values: bool = False) -> dict:
    from fastml.errors import InvalidInput

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--{what} {item!r}: expected NAME=VALUE")
        if numbers:
            try:
                out[key] = (
                    float(value)
                    if any(ch in value for ch in ".eE") or value.lower() in ("nan", "inf", "-inf")
                    else int(value)
                )
            except ValueError:
                raise InvalidInput(f"--{what} {item!r}: {value!r} is not a number") from None
        elif json_values:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value
    return out


def _json_file(path: str | None, what: str):
    if path is None:
        return None
    from fastml.errors import InvalidInput

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, or bytes that are not UTF-8 text
        raise InvalidInput(f"{what} {path!r}: {exc}") from exc


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _table(rows: list[list], headers: list[str]) -> None:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _version_rows(mvs) -> None:
    _table(
        [
            [
                mv.name,
                mv.version,
                mv.stage,
                ",".join(mv.aliases),
                mv.sha256[:12],
                mv.created_at[:19],
                mv.created_by,
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(mv.metrics.items())),
            ]
            for mv in mvs
        ],
        ["NAME", "VERSION", "STAGE", "ALIASES", "SHA256", "CREATED", "BY", "METRICS"],
    )


def _show_version(mv, as_json: bool) -> None:
    if as_json:
        _print_json(mv.to_dict())
        return
    d = mv.to_dict()
    for key in (
        "ref",
        "stage",
        "aliases",
        "sha256",
        "size_bytes",
        "artifact_path",
        "created_at",
        "created_by",
        "description",
        "parent",
        "run_id",
        "dataset_fingerprint",
        "feature_refs",
        "metrics",
        "params",
        "tags",
    ):
        value = d[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:20s} {'' if value is None else value}")
    # The original framework file (a pickle converted on register) and the declared signature: shown when there
    # is one, so the text view tells what --json tells about where the ONNX came from.
    for key in ("source_sha256", "source_size_bytes", "source_path"):
        if d.get(key) is not None:
            print(f"{key:20s} {d[key]}")
    if d.get("signature") is not None:
        print(f"{'signature':20s} {json.dumps(d['signature'], sort_keys=True)}")
    print(f"{'model_card':20s} {'yes' if mv.model_card else 'none'}")


def _show_request(req: dict, as_json: bool) -> None:
    if as_json:
        _print_json(req)
        return
    print(
        f"request {req['id']}: {req['ref']} {req['from_stage']} -> {req['target_stage']} by {req['requester']}: "
        f"{req['status']} ({req['approvals']}/{req['required_approvals']} approvals)"
    )
    for d in req["decisions"]:
        print(f"  {d['at'][:19]}  {d['decision']:8s} {d['reviewer']}: {d['comment']}")


# ---------------------------------------------------------------------------- handlers
def _register(args) -> int:
    reg = _registry(args)
    mv = reg.register(
        args.name,
        args.artifact,
        version=args.version,
        bump=args.bump,
        metrics=_pairs(args.metric, "metric", numbers=True),
        params=_pairs(args.param, "param", json_values=True),
        tags=_pairs(args.tag, "tag"),
        description=args.description,
        parent=args.parent,
        signature=_json_file(args.signature, "--signature"),
        model_card=_json_file(args.model_card, "--model-card"),
        eval_results=_json_file(args.eval_results, "--eval-results"),
        source_artifact=args.source_artifact,
        run_id=args.run_id,
        dataset_fingerprint=args.dataset_fingerprint,
        feature_refs=args.feature_ref or None,
        actor=args.actor,
    )
    reg.close()
    if args.json:
        _print_json(mv.to_dict())
    else:
        print(f"registered {mv.ref} (sha256 {mv.sha256[:12]}, {mv.size_bytes} bytes, stage {mv.stage})")
    return 0


def _list(args) -> int:
    reg = _registry(args)
    tags = _pairs(args.tag, "tag")
    if args.name or tags or args.stage:
        mvs = (
            reg.search(tags=tags, stage=args.stage, name=args.name)
            if (tags or args.stage)
            else reg.list_versions(args.name)
        )
        if args.name and not mvs:
            reg.list_versions(args.name)  # NotFound with suggestions for an unknown name
        if args.json:
            _print_json([mv.to_dict() for mv in mvs])
        else:
            _version_rows(mvs)
        return 0
    models = reg.list_models()
    if args.json:
        _print_json(models)
    else:
        _table(
            [
                [
                    m["name"],
                    m["versions"],
                    m["latest"],
                    " ".join(f"{s}={','.join(v)}" for s, v in m["stages"].items()),
                    " ".join(f"{a}={v}" for a, v in sorted(m["aliases"].items())),
                ]
                for m in models
            ],
            ["NAME", "VERSIONS", "LATEST", "STAGES", "ALIASES"],
        )
    return 0


def _show(args) -> int:
    _show_version(_registry(args).resolve(args.ref), args.json)
    return 0


def _request(args) -> int:
    reg = _registry(args)
    rid = reg.request_transition(args.ref, args.stage, actor=args.actor, reason=args.reason)
    req = reg.get_request(rid)
    reg.close()  # waits (briefly) for webhook deliveries
    if args.json:
        _print_json(req)
    else:
        print(
            f"request {rid} opened: {req['ref']} -> {req['target_stage']}, needs {req['required_approvals']} approvals "
            f"(fastml registry approve {rid} --reviewer NAME)"
        )
    return 0


def _signers(args) -> int:
    from pathlib import Path

    from fastml.errors import InvalidInput
    from fastml.registry import signing

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not UTF-8 text
        raise InvalidInput(f"allowed signers file {args.file!r}: {exc}") from exc
    reg = _registry(args)
    signing.set_policy(reg.engine, text, required=args.require)
    count = len(signing.parse_allowed_signers(text))
    reg.close()
    print(f"allowed signers: {count} reviewer(s); signed approvals {'required' if args.require else 'optional'}")
    return 0


def _approve(args) -> int:
    reg = _registry(args)
    signature = None
    if args.key:
        from fastml.errors import InvalidInput
        from fastml.registry import signing

        if not args.reviewer:
            raise InvalidInput("--key signs as a named reviewer: give --reviewer NAME too")
        payload = signing.payload_for(reg, args.request_id, args.reviewer)
        signature = signing.sign(signing.load_private_key(args.key), payload)
    req = reg.approve(args.request_id, reviewer=args.reviewer, comment=args.comment, signature=signature)
    reg.close()
    _show_request(req, args.json)
    return 0


def _reject(args) -> int:
    reg = _registry(args)
    req = reg.reject(args.request_id, reviewer=args.reviewer, comment=args.comment)
    reg.close()
    _show_request(req, args.json)
    return 0


def _requests(args) -> int:
    reqs = _registry(args).list_requests(status=None if args.status == "all" else args.status, name=args.name)
    if args.json:
        _print_json(reqs)
    else:
        _table(
            [
                [
                    r["id"],
                    r["ref"],
                    f"{r['from_stage']}->{r['target_stage']}",
                    r["requester"],
                    r["status"],
                    f"{r['approvals']}/{r['required_approvals']}",
                    r["created_at"][:19],
                ]
                for r in reqs
            ],
            ["ID", "REF", "MOVE", "REQUESTER", "STATUS", "APPROVALS", "CREATED"],
        )
    return 0


def _promote(args) -> int:
    reg = _registry(args)
    mv = reg.transition(args.ref, args.stage, actor=args.actor, reason=args.reason)
    reg.close()
    if args.json:
        _print_json(mv.to_dict())
    else:
        print(f"{mv.ref} is now in {mv.stage}")
    return 0


def _alias(args) -> int:
    from fastml.errors import InvalidInput

    reg = _registry(args)
    if args.delete:
        reg.delete_alias(args.name, args.alias, actor=args.actor)
        reg.close()
        if args.json:
            _print_json({"name": args.name, "alias": args.alias, "deleted": True})
        else:
            print(f"deleted alias {args.name}@{args.alias}")
        return 0
    if not args.version:
        raise InvalidInput("alias needs a VERSION (or --delete)")
    mv = reg.set_alias(args.name, args.alias, args.version, actor=args.actor)
    reg.close()
    if args.json:
        _print_json(mv.to_dict())
    else:
        print(f"{args.name}@{args.alias} -> {mv.version}")
    return 0


def _delete(args) -> int:
    reg = _registry(args)
    # Resolve first so a bare name or alias deletes exactly the version printed (churn -> churn:1.0.1).
    exact = reg.resolve(args.ref).ref
    reg.delete_version(exact, actor=args.actor, reason=args.reason)
    reg.close()
    print(f"deleted {exact}")
    return 0


def _compare(args) -> int:
    res = _registry(args).compare(
        args.refs, metric=args.metric, higher_is_better=not args.lower_is_better, alpha=args.alpha
    )
    if args.json:
        _print_json(res)
        return 0
    params = sorted(res["params_differ"])
    _table(
        [
            [v["ref"], v["stage"], v["metric"], *(json.dumps(v["params"].get(p)) for p in params)]
            for v in res["versions"]
        ],
        ["REF", "STAGE", args.metric.upper(), *params],
    )
    for t in res["tests"]:
        print(f"{t['test']}: {t['a']} vs {t['b']}: p = {t['p_value']:.4g}")
    print(res["decision"])
    return 0


def _lineage(args) -> int:
    res = _registry(args).lineage(args.ref)
    if args.json:
        _print_json(res)
        return 0
    print(
        f"{res['ref']} (stage {res['stage']}; run {res['run_id'] or '-'}; dataset {res['dataset_fingerprint'] or '-'}; "
        f"features {','.join(res['feature_refs']) or '-'})"
    )
    for depth, a in enumerate(res["ancestors"], 1):
        print(f"  {'^ ' * depth}{a['ref']} (run {a['run_id'] or '-'})")
    for d in res["descendants"]:
        print(f"  {'v ' * d['depth']}{d['ref']} (child of {d['parent']})")
    return 0


def _history(args) -> int:
    res = _registry(args).history(args.name, at=args.at)
    if args.json:
        _print_json(res)
        return 0
    _table(
        [
            [e["id"], e["at"][:23], e["actor"], e["kind"], e["version"], e["from"], e["to"], e["reason"]]
            for e in res["events"]
        ],
        ["ID", "AT", "ACTOR", "KIND", "VERSION", "FROM", "TO", "REASON"],
    )
    print(f"\nstate at {res['at']}:")
    for stage, vs in res["stages"].items():
        print(f"  {stage:12s} {', '.join(vs) or '-'}")
    for alias, v in sorted(res["aliases"].items()):
        print(f"  @{alias:11s} {v}")
    return 0


def _events(args) -> int:
    evs = _registry(args).events(after_id=args.after_id, limit=args.limit)
    if args.json:
        _print_json(evs)
    else:
        _table(
            [[e["id"], e["at"][:23], e["actor"], e["kind"], e["model"], e["version"], e["from"], e["to"]] for e in evs],
            ["ID", "AT", "ACTOR", "KIND", "MODEL", "VERSION", "FROM", "TO"],
        )
    return 0


def _verify(args) -> int:
    reg = _registry(args)
    problems = reg.verify()
    # Debris of interrupted registers is removed when the registry opens; say what was removed (not a problem).
    cleaned = reg.cleaned()
    if args.json:
        report = {"ok": not problems, "problems": problems}
        if cleaned:
            report["cleaned"] = cleaned
        _print_json(report)
        return 1 if problems else 0
    if cleaned:
        total = sum(c["size_bytes"] for c in cleaned if c["kind"] == "temporary")
        n_tmp = sum(1 for c in cleaned if c["kind"] == "temporary")
        print(f"cleaned up {n_tmp} partial copies left by interrupted registers ({total} bytes)")
    if problems:
        _table(
            [[p["ref"], p["kind"], p["sha256"][:12], p["problem"]] for p in problems],
            ["REF", "KIND", "SHA256", "PROBLEM"],
        )
    else:
        print("all artifacts verified")
    return 1 if problems else 0
