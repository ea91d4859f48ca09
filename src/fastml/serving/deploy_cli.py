"""``fastml deploy ...``: apply a deployment file, show deployments and their live per-variant counts.

``apply FILE`` checks the file (fields, weights, shadows), resolves every registry reference and compares
the models' signatures, then persists it under ``$FASTML_HOME/deployments/`` all-or-nothing; running
servers on that home apply it within a second, without dropping requests. Nothing is written when a check
fails. The file replaces the whole applied set: apply prints the deployments it adds, changes and removes,
and refuses a file that declares none without ``--allow-empty``. ``status`` sums the counters that serving
processes publish beside it.
"""

from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="deployments: A/B splits, sticky routing, shadows, alias following")
    sub = p.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)

    c = sub.add_parser("apply", help="check a deployment TOML file and make it the served deployments")
    c.add_argument("file", help="deployment file (TOML, see docs/deployments.md)")
    c.add_argument("--dry-run", action="store_true", help="check only; persist nothing")
    c.add_argument("--json", action="store_true", help="print what was applied as JSON")
    c.add_argument(
        "--server",
        metavar="URL",
        help="apply through a running server's admin endpoint (PUT /v2/deployments/<name> per deployment in the "
        "file; others on the server are left as they are) instead of writing FASTML_HOME directly",
    )
    c.add_argument("--token-file", metavar="PATH", help="with --server: a file holding the server's admin token")
    c.add_argument(
        "--allow-empty",
        action="store_true",
        help="apply a file that declares no deployments, removing every applied deployment",
    )
    c.set_defaults(handler=_apply)

    c = sub.add_parser("status", help="deployments, variants, weights and live per-variant counts")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(handler=_status)

    c = sub.add_parser("show", help="print the persisted deployment file")
    c.add_argument("--json", action="store_true", help="print the persisted deployments as JSON")
    c.set_defaults(handler=_show)


def check_references(specs: dict, source: str) -> dict[str, dict[str, str]]:
    """Resolve every variant's registry reference and compare signatures within each deployment.

    A bare model name that the registry does not know is taken as a model the server serves from its
    repository (the server checks it when it applies the file).

    Returns:
        ``{deployment: {variant: "name:version" | "served model"}}``.

    Raises:
        NotFound: a reference that does not resolve. InvalidInput: signatures differ. Both name the field.
    """
    from fastml.errors import InvalidInput, NotFound
    from fastml.registry import Registry

    resolved: dict[str, dict[str, str]] = {}
    with Registry() as reg:
        for name, spec in specs.items():
            rows: dict[str, str] = {}
            first = None
            for kind, items in (("variants", spec.variants), ("shadows", spec.shadows)):
                for i, v in enumerate(items):
                    field = f"{source}: deployments.{name}.{kind}[{i}].model"
                    try:
                        mv = reg.resolve(v.model)
                    except NotFound as exc:
                        if "@" in v.model or ":" in v.model:
                            raise NotFound(f"{field}: {exc}") from None
                        rows[v.name] = "served model"
                        continue
                    except InvalidInput as exc:  # a malformed reference ('rec:1'): name the field as well
                        raise InvalidInput(f"{field}: {exc}") from None
                    rows[v.name] = f"{mv.name}:{mv.version}"
                    sig = _onnx_signature(reg.artifact_path(f"{mv.name}:{mv.version}"))
                    if first is None:
                        first = (sig, f"{kind}[{i}] ({v.model})")
                    elif sig != first[0]:
                        raise InvalidInput(
                            f"{field}: {v.model!r} has a different signature from {first[1]}: {sig} vs {first[0]}"
                        )
            resolved[name] = rows
    return resolved


def _onnx_signature(path) -> tuple:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def row(t):
        return (t.name, t.type, tuple(d if isinstance(d, int) else -1 for d in t.shape))

    return tuple(row(t) for t in sess.get_inputs()), tuple(row(t) for t in sess.get_outputs())


def _apply_remote(args, specs: dict) -> int:
    """PUT each deployment of the file to ``args.server``; the server checks, applies and persists it."""
    import urllib.error
    import urllib.request
    from pathlib import Path
    from urllib.parse import quote

    from fastml.errors import FastMLError, InvalidInput, NotFound, PermissionDenied, Unauthenticated
    from fastml.serving import deployment_config as dconf

    headers = {"Content-Type": "application/toml"}
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"--token-file {args.token_file}: cannot read the token: {exc}") from None
        headers["Authorization"] = "Bearer " + token
    applied = {}
    for name, spec in specs.items():
        url = f"{args.server.rstrip('/')}/v2/deployments/{quote(name, safe='')}"
        body = dconf.dump({name: spec}).encode()
        req = urllib.request.Request(url, data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                applied[name] = json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except ValueError:
                message = ""
            kind = {400: InvalidInput, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound}.get(
                e.code, FastMLError
            )
            raise kind(f"{args.server}: deployment {name!r}: HTTP {e.code}: {message}") from None
        except urllib.error.URLError as e:
            raise FastMLError(f"{args.server}: cannot reach the server: {e.reason}") from None
    if args.json:
        print(json.dumps({"server": args.server, "applied": applied}, indent=2))
        return 0
    for name, doc in applied.items():
        print(f"applied deployment {name} on {args.server}: " + ", ".join(doc.get("variants", {})))
    return 0


def _apply(args) -> int:
    from fastml.errors import InvalidInput
    from fastml.serving import deployment_config as dconf

    text, specs = dconf.read(args.file)
    if args.server and not args.dry_run:
        return _apply_remote(args, specs)
    path = dconf.state_path()
    changes = _changes(_applied(path), specs)
    # The file replaces the whole applied set: an empty or all-comments file would stop every deployment.
    if not specs and not args.allow_empty:
        removing = ", ".join(changes["removed"]) or "none is applied now"
        raise InvalidInput(
            f"{args.file}: declares no deployments, so applying it would remove every applied deployment "
            f"({removing}); pass --allow-empty to do that"
        )
    resolved = check_references(specs, args.file)
    if not args.dry_run:
        dconf.write_atomic(path, text)
    if args.json:
        doc = {"file": str(path), "applied": not args.dry_run, "deployments": resolved, **changes}
        print(json.dumps(doc, indent=2))
        return 0
    verb = "checked" if args.dry_run else "applied"
    for name, rows in resolved.items():
        print(f"{verb} deployment {name}: " + ", ".join(f"{v} -> {r}" for v, r in rows.items()))
    summary = "; ".join(f"{kind} {', '.join(names) or 'none'}" for kind, names in changes.items())
    print(("if applied: " if args.dry_run else "") + summary)
    if not args.dry_run:
        print(f"saved to {path}; running servers on this FASTML_HOME switch within a second")
    return 0


def _applied(path) -> dict:
    """The deployments applied now (none when nothing was applied)."""
    from fastml.errors import InvalidInput
    from fastml.serving import deployment_config as dconf

    try:
        return dconf.read(path)[1] if path.exists() else {}
    except InvalidInput:  # servers keep what they run when this file is bad; the new file replaces it anyway
        return {}


def _changes(before: dict, after: dict) -> dict[str, list[str]]:
    """``{"added", "changed", "removed"}`` deployment names, going from ``before`` to ``after``."""
    return {
        "added": [n for n in after if n not in before],
        "changed": [n for n in after if n in before and after[n] != before[n]],
        "removed": [n for n in before if n not in after],
    }


def _status(args) -> int:
    from fastml.serving.deployments import read_status

    status = read_status()
    if args.json:
        print(json.dumps({"deployments": status}, indent=2))
        return 0
    if not status:
        print("no deployments (fastml deploy apply FILE)")
        return 0
    for name, d in status.items():
        print(f"{name}  ({d['processes']} serving process(es))")
        print(
            f"  {'VARIANT':<16} {'KIND':<8} {'MODEL':<24} {'WEIGHT_BP':>9} {'ROUTED':>9} {'REQUESTS':>9} {'ERRORS':>7}  SERVING"
        )
        for vname, r in d["variants"].items():
            bp = r.get("weight_bp", r.get("share_bp"))
            routed = r.get("routed", r.get("mirrored", 0))
            print(
                f"  {vname:<16} {r['kind']:<8} {r['model']:<24} {bp:>9} {routed:>9} {r['requests']:>9} {r['errors']:>7}  "
                f"{', '.join(r['serving']) or '-'}"
            )
    return 0


def _show(args) -> int:
    from fastml.errors import NotFound
    from fastml.serving import deployment_config as dconf

    path = dconf.state_path()
    if not path.exists():
        raise NotFound("no deployments (fastml deploy apply FILE)")
    text = path.read_text(encoding="utf-8")
    if args.json:
        import tomllib

        print(json.dumps(tomllib.loads(text), indent=2))
        return 0
    sys.stdout.write(text)
    return 0
