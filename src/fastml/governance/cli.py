"""``fastml governance ...`` and ``fastml audit ...``.

Checkers exit 0 when everything passes and 1 when something fails or needs review (so a CI step can gate
on them); bad input exits 2 through the main CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    _add_governance(subparsers)
    _add_audit(subparsers)


# ----------------------------------------------------------------------------------------- governance


def _add_governance(subparsers) -> None:
    gov = subparsers.add_parser("governance", help="fairness, compliance checks, promotion gates, lineage")
    sub = gov.add_subparsers(dest="governance_cmd", metavar="COMMAND")
    gov.set_defaults(handler=lambda args: (gov.print_help(), 2)[1])

    p = sub.add_parser("check", help="assess a model card against GDPR, EU AI Act, CCPA/CPRA and HIPAA rules")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("card", nargs="?", help="model card file (.toml or .json)")
    src.add_argument("--model", metavar="REF", help="a registry version (name:version, name@stage) instead of a file")
    p.add_argument("--schema", help="training-data schema JSON (default: the card's)")
    p.add_argument("--sample", help="sample rows (.csv, .jsonl, .parquet) to scan values of")
    p.add_argument("--rulesets", help="comma-separated: gdpr,eu_ai_act,ccpa,hipaa (default all)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(handler=_check)

    p = sub.add_parser("scan", help="find personal data, special categories and HIPAA identifiers in a schema")
    p.add_argument("schema", help="schema JSON ({'columns': [...]}) or a .csv/.jsonl/.parquet data file")
    p.add_argument("--sample", help="sample rows to check value patterns on")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_scan)

    p = sub.add_parser("fairness", help="group fairness metrics of predictions in a data file")
    p.add_argument("data", help=".csv, .parquet or .jsonl with label, prediction and sensitive columns")
    p.add_argument("--y-true", required=True, metavar="COL")
    p.add_argument("--y-pred", required=True, metavar="COL")
    p.add_argument(
        "--sensitive",
        required=True,
        action="append",
        metavar="COL",
        help="sensitive column; repeat for intersectional groups",
    )
    p.add_argument("--privileged", help="privileged group value (comma-separated, one per sensitive column)")
    p.add_argument("--unprivileged", help="unprivileged group value")
    p.add_argument("--method", choices=("between_groups", "to_overall"), default="between_groups")
    p.add_argument("--pos-label", default="1", help="the favourable label (default 1)")
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="override a threshold, e.g. demographic_parity_difference=0.05",
    )
    p.add_argument("--record", metavar="REF", help="store the result as fairness evidence of this registry version")
    p.add_argument("--html", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_fairness)

    p = sub.add_parser("gate", help="evaluate the promotion gate for a registry version (dry run)")
    p.add_argument("ref", help="registry version, e.g. credit-scoring:1.2.0")
    p.add_argument("--stage", default="production")
    p.add_argument(
        "--policy", help="policy file (.toml/.json); default $FASTML_HOME/governance/policy.toml, else built-in"
    )
    p.add_argument("--html", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_gate)

    p = sub.add_parser("lineage", help="dataset -> features -> run -> model -> deployment graph")
    p.add_argument("ref", nargs="?", help="limit to what is upstream/downstream of this version (name:version)")
    p.add_argument("--model", action="append", help="only these model names")
    p.add_argument("--format", choices=("json", "dot", "mermaid"), default="json")
    p.add_argument("--out", metavar="FILE")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(handler=_lineage)

    p = sub.add_parser("policy", help="show the gate policy in force; --init writes the default policy file")
    p.add_argument(
        "--init", action="store_true", help="write $FASTML_HOME/governance/policy.toml (not over an existing one)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_policy)

    p = sub.add_parser("rules", help="list every compliance rule with its article")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_rules)


def _print_findings(rep) -> None:
    for _name, rs in rep.rulesets.items():
        state = "applies" if rs["applicable"] else "n/a"
        print(f"{rs['title']:<16} {state:<8} {rs['reason']}")
    print()
    width = max((len(f.rule_id) for f in rep.findings), default=8)
    for f in rep.findings:
        print(f"{f.rule_id:<{width}}  {f.verdict:<12}  {f.article}")
        for ev in f.evidence:
            print(f"{'':<{width}}    - {ev}")
    c = rep.counts()
    print(f"\nverdict: {rep.verdict}  ({c['pass']} pass, {c['fail']} fail, {c['needs_review']} need review)")


def _write(path: str, text: str) -> None:
    import os
    from pathlib import Path

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def _check(args) -> int:
    from fastml.governance import pii
    from fastml.governance.card import load_card
    from fastml.governance.compliance import assess
    from fastml.governance.report import build_report, to_html, to_json

    if args.model:
        from fastml.registry import Registry

        with Registry() as reg:
            mv = reg.resolve(args.model)
        if not mv.model_card:
            from fastml.errors import NotFound

            raise NotFound(f"{mv.ref} has no model card")
        card = mv.model_card
    else:
        card = load_card(args.card)
    schema = None
    if args.schema:
        from pathlib import Path

        from fastml.errors import InvalidInput

        try:
            schema = json.loads(Path(args.schema).read_text())
        except FileNotFoundError:
            raise InvalidInput(f"schema file {args.schema} does not exist") from None
        except ValueError as exc:  # not JSON, or not UTF-8 text
            raise InvalidInput(f"schema file {args.schema}: not valid JSON: {exc}") from None
    sample = pii.load_sample(args.sample) if args.sample else None
    rulesets = [r.strip() for r in args.rulesets.split(",") if r.strip()] if args.rulesets else None
    rep = assess(card, schema=schema, sample=sample, rulesets=rulesets)
    doc = build_report(compliance=rep)
    if args.out:
        _write(args.out, to_json(doc))
    if args.html:
        _write(args.html, to_html(doc))
    if args.json:
        sys.stdout.write(to_json(doc))
    else:
        _print_findings(rep)
    return 0 if rep.verdict == "pass" else 1


def _scan(args) -> int:
    from pathlib import Path

    from fastml.governance import pii

    path = Path(args.schema)
    if path.suffix.lower() == ".json":
        try:
            schema = json.loads(path.read_text())
        except FileNotFoundError:
            from fastml.errors import InvalidInput

            raise InvalidInput(f"schema file {path} does not exist") from None
        sample = pii.load_sample(args.sample) if args.sample else None
    else:
        sample = pii.load_sample(path)
        schema = list(sample)
    result = pii.scan(schema, sample)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if not result.findings:
        print("no personal data detected")
    for f in result.findings:
        tags = ",".join(f.categories)
        extra = []
        if f.safe_harbor:
            extra.append("HIPAA " + ",".join(f.safe_harbor))
        if f.special:
            extra.append("GDPR Art. 9")
        if f.ccpa_sensitive:
            extra.append("CCPA sensitive")
        print(f"{f.column:<28} {tags:<28} {'; '.join(extra)}")
        for ev in f.evidence:
            print(f"{'':<28}   - {ev}")
    print(f"\nPHI (health data with identifiers): {'yes' if result.phi else 'no'}")
    return 0


def _read_table(path: str) -> dict:
    from pathlib import Path

    from fastml.errors import InvalidInput

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"data file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(p)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
    elif suffix in (".jsonl", ".ndjson"):
        import pyarrow.json as pajson

        table = pajson.read_json(p)
    else:
        raise InvalidInput(f"data file {p}: use .csv, .parquet or .jsonl")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _parse_group(text: str | None, n: int):
    if text is None:
        return None
    parts = text.split(",")
    return parts[0] if n == 1 and len(parts) == 1 else tuple(parts)


def _fairness(args) -> int:
    from fastml.errors import InvalidInput
    from fastml.governance.fairness import assess_fairness
    from fastml.governance.report import build_report, to_html, to_json

    cols = _read_table(args.data)
    for c in [args.y_true, args.y_pred, *args.sensitive]:
        if c not in cols:
            raise InvalidInput(f"column {c!r} is not in {args.data}; columns: {sorted(cols)}")
    thresholds = {}
    for t in args.threshold:
        name, sep, value = t.partition("=")
        if not sep:
            raise InvalidInput(f"--threshold {t!r} must look like METRIC=VALUE")
        try:
            thresholds[name] = None if value.lower() in ("none", "off") else float(value)
        except ValueError:
            raise InvalidInput(f"--threshold {t!r}: {value!r} is not a number") from None
    y_true, y_pred = cols[args.y_true], cols[args.y_pred]
    pos = args.pos_label
    if y_true.dtype.kind in "iufb" and len(y_true):
        try:
            number = float(pos)
        except ValueError:
            raise InvalidInput(f"--pos-label {pos!r} is not a number but the labels are") from None
        label_type = type(y_true.flat[0].item())
        converted = label_type(number)
        if float(converted) != number:
            # int("0.5") would silently make 0 the favourable label, and bool(2) would make it True.
            raise InvalidInput(
                f"--pos-label {pos!r} is not a value of column {args.y_true!r} ({label_type.__name__} labels)"
            )
        pos = converted
    sensitive = {c: cols[c].astype(str) for c in args.sensitive}
    n = len(args.sensitive)
    rep = assess_fairness(
        y_true,
        y_pred,
        sensitive,
        method=args.method,
        thresholds=thresholds,
        privileged=_parse_group(args.privileged, n),
        unprivileged=_parse_group(args.unprivileged, n),
        pos_label=pos,
    )
    if args.record:
        from fastml.governance.audit import AuditLog
        from fastml.governance.gates import record_fairness
        from fastml.registry import Registry

        with Registry() as reg:
            mv = reg.resolve(args.record)
        record_fairness(mv.name, mv.version, rep, audit=AuditLog())
    doc = build_report(fairness=rep, model=args.record)
    if args.html:
        _write(args.html, to_html(doc))
    if args.json:
        sys.stdout.write(to_json(doc))
    else:
        print(f"{'group':<24} {'count':>7} {'selected':>9} {'TPR':>7} {'FPR':>7} {'acc':>7}")
        for g in [rep.overall, *rep.groups]:
            print(f"{g.label:<24} {g.count:>7} {g.selection_rate:>9.4f} {g.tpr:>7.4f} {g.fpr:>7.4f} {g.accuracy:>7.4f}")
        print()
        for m in rep.metrics.values():
            val = "undefined" if m.value != m.value else f"{m.value:.4f}"
            print(f"{m.name:<40} {val:>10}  {m.describe_bound():<16} {'pass' if m.passed else 'FAIL'}")
        for w in rep.warnings:
            print(f"warning: {w}")
        print(
            f"\nfairness: {'pass' if rep.passed else 'fail'}"
            + (f" (recorded for {args.record})" if args.record else "")
        )
    return 0 if rep.passed else 1


def _gate(args) -> int:
    from fastml.errors import InvalidInput
    from fastml.governance.gates import PolicySet, configured_policy_path, evaluate
    from fastml.governance.report import build_report, to_html, to_json
    from fastml.registry import Registry

    path = args.policy or configured_policy_path()
    policy = PolicySet.load(path) if path else PolicySet()
    with Registry() as reg:
        mv = reg.resolve(args.ref)
        if args.stage not in reg.stages:
            raise InvalidInput(f"unknown stage {args.stage!r}; stages: {reg.stages}")
    from fastml.governance.audit import AuditLog

    decision = evaluate(mv, args.stage, policy, audit=AuditLog())  # as attach() runs it
    doc = build_report(compliance=decision.compliance, gate=decision.to_dict(), model=mv.ref)
    if args.html:
        _write(args.html, to_html(doc))
    if args.json:
        sys.stdout.write(to_json(decision.to_dict()))
    else:
        print(f"{mv.ref} -> {args.stage}: {'allowed' if decision.allowed else 'BLOCKED'}")
        for r in decision.reasons:
            print(f"  - {r}")
    return 0 if decision.allowed else 1


def _lineage(args) -> int:
    from fastml.config import get_settings
    from fastml.governance.lineage import build_lineage
    from fastml.registry import Registry

    fmt = "json" if args.json else args.format
    settings = get_settings()
    fs = None
    if (settings.home / "features").exists():
        from fastml.features import FeatureStore

        fs = FeatureStore(online_backend="reference")
    try:
        with Registry() as reg:
            names = args.model
            if args.ref:
                mv = reg.resolve(args.ref)
                names = [mv.name] if names is None else names
            graph = build_lineage(reg, fs, models=names)
            if args.ref:
                graph = graph.subgraph(f"model:{mv.name}:{mv.version}")
    finally:
        if fs is not None:
            fs.close()
    text = graph.export(fmt)
    if args.out:
        _write(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


_DEFAULT_POLICY_TOML = """\
# Promotion gate policy (fastml governance). Keys: protected_stages, require_model_card, rulesets,
# block_on, require_fairness, required_fairness_metrics, fairness_thresholds. [models.NAME] tables start
# from [default] and override it for one model.
[default]
protected_stages = ["production"]
require_model_card = true
block_on = ["fail", "needs_review"]
require_fairness = true
required_fairness_metrics = ["demographic_parity_difference", "equalized_odds_difference"]

[default.fairness_thresholds]
demographic_parity_difference = 0.1
equalized_odds_difference = 0.1
disparate_impact = 0.8
"""


def _policy(args) -> int:
    from fastml.config import get_settings
    from fastml.errors import Conflict
    from fastml.governance.gates import PolicySet, configured_policy_path

    path = configured_policy_path()
    if args.init:
        if path is not None:
            raise Conflict(f"{path} already exists; edit it instead")
        path = get_settings().path("governance", "policy.toml")
        PolicySet.from_dict(__import__("tomllib").loads(_DEFAULT_POLICY_TOML))  # the template must be valid
        _write(str(path), _DEFAULT_POLICY_TOML)
        print(f"wrote {path}")
        return 0
    policy = PolicySet.load(path) if path is not None else PolicySet()
    doc = {"source": str(path) if path else "built-in default", **policy.to_dict()}
    print(json.dumps(doc, indent=2))
    return 0


def _rules(args) -> int:
    from fastml.governance.compliance import rules_table

    table = rules_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for r in table:
        print(f"{r['rule']:<15} {r['article']:<45} {r['checks']}")
    return 0


# ----------------------------------------------------------------------------------------- audit


def _count(text: str) -> int:
    """An argparse type: an int >= 0 (a negative --tail printed nothing and exited 0)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_audit(subparsers) -> None:
    aud = subparsers.add_parser("audit", help="the tamper-evident audit log under $FASTML_HOME/audit")
    sub = aud.add_subparsers(dest="audit_cmd", metavar="COMMAND")
    aud.set_defaults(handler=lambda args: (aud.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help="audit directory (default $FASTML_HOME/audit)")

    p = sub.add_parser("verify", parents=[common], help="check the hash chain; names the first bad entry")
    p.add_argument("--expect-head", metavar="HASH", help="a head hash kept elsewhere that must still be in the chain")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("export", parents=[common], help="write every entry (verified first)")
    p.add_argument("--format", choices=("jsonl", "json", "csv"), default="jsonl")
    p.add_argument("--out", metavar="FILE", help="default: standard output")
    p.add_argument("--no-verify", action="store_true", help="export even if the chain is broken")
    p.set_defaults(handler=_export)

    p = sub.add_parser("log", parents=[common], help="show entries")
    p.add_argument("--tail", type=_count, metavar="N", help="only the last N")
    p.add_argument("--action", metavar="PREFIX", help="only actions starting with PREFIX")
    p.add_argument("--target", help="only this target")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_log)

    p = sub.add_parser("head", parents=[common], help="print the last entry's hash (keep it elsewhere as an anchor)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_head)

    p = sub.add_parser(
        "import-registry", parents=[common], help="append the registry events the audit log does not hold yet"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_import_registry)

    p = sub.add_parser("record", parents=[common], help="append an entry (e.g. a deployment made outside fastml)")
    p.add_argument("action", help="dotted action name, e.g. deployment.rollout")
    p.add_argument("--target")
    p.add_argument("--before", help="JSON")
    p.add_argument("--after", help="JSON")
    p.add_argument("--details", help="JSON")
    p.add_argument("--actor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_record)


def _audit_log(args, *, reading: bool = True):
    """The audit log of ``--dir`` (default the home's). A directory named for reading must exist: a mistyped
    path would otherwise read as an empty log and verify as "OK: 0 entries"."""
    from fastml.governance.audit import AuditLog

    if not args.dir:
        return AuditLog()
    if reading and not Path(args.dir).is_dir():
        from fastml.errors import NotFound

        raise NotFound(f"no audit log at {args.dir}: the directory does not exist")
    return AuditLog(args.dir)


def _verify(args) -> int:
    from fastml.errors import InvalidInput

    head = args.expect_head
    if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
        # Not a hash `fastml audit head` prints: "the chain was rewritten" (exit 1) would blame the log for a typo.
        raise InvalidInput(
            f"--expect-head must be a 64-digit lowercase hex hash, as `fastml audit head` prints; got {head!r}"
        )
    res = _audit_log(args).verify(expected_head=head)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    elif res.ok:
        print(f"audit log OK: {res.entries} entries, head {res.head_hash}")
        for n in res.notes:
            print(f"note: {n}")
    else:
        where = f"line {res.first_bad_line}" if res.first_bad_line else "anchor"
        seq = f" (seq {res.first_bad_seq})" if res.first_bad_seq is not None else ""
        print(f"audit log BROKEN at {where}{seq}: {res.problem}", file=sys.stderr)
        print(f"{res.entries} entries verified before it")
    return 0 if res.ok else 1


def _export(args) -> int:
    log = _audit_log(args)
    if args.out:
        log.export(args.out, args.format, verify=not args.no_verify)
    else:
        log.export(sys.stdout.buffer, args.format, verify=not args.no_verify)
        sys.stdout.flush()
    return 0


def _log(args) -> int:
    entries = list(_audit_log(args).entries())
    if args.action:
        entries = [e for e in entries if e["action"].startswith(args.action)]
    if args.target:
        entries = [e for e in entries if e["target"] == args.target]
    if args.tail is not None:
        entries = entries[-args.tail :] if args.tail > 0 else []
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        change = ""
        if e["before"] is not None or e["after"] is not None:
            change = f" {json.dumps(e['before'])} -> {json.dumps(e['after'])}"
            if len(change) > 100:  # the full values are in --json / export
                change = change[:99] + "…"
        print(f"{e['seq']:>6} {e['at']} {e['actor']:<12} {e['action']:<28} {e['target'] or '-'}{change}")
    return 0


def _head(args) -> int:
    head = _audit_log(args).head()
    if args.json:
        print(json.dumps(head))
    elif head is None:
        print("audit log is empty")
    else:
        print(f"{head['seq']} {head['hash']}")
    return 0


def _import_registry(args) -> int:
    from fastml.governance.audit import import_registry_events
    from fastml.registry import Registry

    with Registry() as reg:
        added = import_registry_events(reg, _audit_log(args, reading=False))
    print(json.dumps({"added": added}) if args.json else f"imported {added} registry event(s)")
    return 0


def _record(args) -> int:
    from fastml.errors import InvalidInput

    def parse(name, text):
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--{name} is not valid JSON: {exc}") from None

    entry = _audit_log(args, reading=False).append(
        args.action,
        target=args.target,
        before=parse("before", args.before),
        after=parse("after", args.after),
        details=parse("details", args.details),
        actor=args.actor,
    )
    if args.json:
        print(json.dumps(entry, indent=2))
    else:
        print(f"recorded seq {entry['seq']} {entry['hash']}")
    return 0
