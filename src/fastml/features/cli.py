"""``fastml features register|ingest|materialize|get|stats|lineage|list``.

Top-level imports stay light (argparse, json); the store is imported inside the handlers.
"""

from __future__ import annotations

import json

from fastml import jsonout


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("features", help="feature groups, training sets and the online store")
    sub = p.add_subparsers(dest="features_command", metavar="COMMAND")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    r = sub.add_parser("register", help="register a feature group (a new version when the schema changed)")
    r.add_argument("name", nargs="?", help="group name (or give --file)")
    r.add_argument("--file", help="JSON file with the group definition (FeatureGroup.to_dict() shape)")
    r.add_argument("--entity", action="append", default=[], help="entity key column (repeat for composite keys)")
    r.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME:DTYPE",
        help="feature and dtype (float32, float64, int64, bool, string); repeat",
    )
    r.add_argument("--ttl-s", type=float, default=0.0, help="values older than this many seconds are missing")
    r.add_argument("--owner", default="")
    r.add_argument("--description", default="")
    r.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--source", default="", help="what feeds the group (lineage)")
    r.add_argument("--timestamp-column", default="event_timestamp")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=_register)

    i = sub.add_parser("ingest", help="validate and append a Parquet or CSV file to the offline store")
    i.add_argument("group", help="group or group@vN")
    i.add_argument("path", help=".parquet or .csv file")
    i.add_argument("--source", default=None, help="lineage source of these rows (default: the file path)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=_ingest)

    m = sub.add_parser("materialize", help="write each entity's latest values to the online store")
    m.add_argument("group", help="group or group@vN")
    m.add_argument("--start", default=None, help="ISO time; only rows with event time >= start")
    m.add_argument("--end", default=None, help="ISO time; only rows with event time < end")
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=_materialize)

    g = sub.add_parser("get", help="look up online values")
    g.add_argument("features", help="comma-separated references, e.g. driver:trips,driver@v2:rating")
    g.add_argument(
        "--key", action="append", required=True, help="entity key (repeat for several entities; composite keys as a,b)"
    )
    g.add_argument("--json", action="store_true")
    g.set_defaults(handler=_get)

    s = sub.add_parser("stats", help="statistics computed at ingest")
    s.add_argument("group", help="group or group@vN")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_stats)

    ln = sub.add_parser("lineage", help="sources, ingests, materialisations and models using a group")
    ln.add_argument("group")
    ln.add_argument("--json", action="store_true")
    ln.set_defaults(handler=_lineage)

    ls = sub.add_parser("list", help="registered groups and versions")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)


def _store():
    from fastml.features import FeatureStore

    return FeatureStore()


def _print(obj, as_json: bool, text: str) -> int:
    print(jsonout.dumps(obj, indent=2, default=str) if as_json else text)
    return 0


def _register(args) -> int:
    from fastml.errors import InvalidInput
    from fastml.features import Feature, FeatureGroup

    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                spec = json.load(fh)
        except OSError as exc:
            raise InvalidInput(f"cannot read {args.file}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8 text
            raise InvalidInput(f"{args.file}: not JSON: {exc}") from exc
        group = FeatureGroup.from_dict(spec)
    else:
        if not args.name:
            raise InvalidInput("give a group name or --file")
        features = []
        for spec in args.feature:
            name, sep, dtype = spec.partition(":")
            if not sep:
                raise InvalidInput(f"--feature {spec!r} must be NAME:DTYPE")
            features.append(Feature(name, dtype))
        tags = {}
        for t in args.tag:
            k, sep, v = t.partition("=")
            if not sep:
                raise InvalidInput(f"--tag {t!r} must be KEY=VALUE")
            tags[k] = v
        group = FeatureGroup(
            args.name,
            entities=args.entity,
            features=features,
            ttl_s=args.ttl_s,
            owner=args.owner,
            description=args.description,
            tags=tags,
            source=args.source,
            timestamp_column=args.timestamp_column,
        )
    version = _store().register(group)
    return _print({"group": group.name, "version": version}, args.json, f"{group.name}@v{version}")


def _ingest(args) -> int:
    from fastml.errors import InvalidInput

    path = args.path
    store = _store()
    g, _ = store.get_group(args.group)
    try:
        if path.endswith(".csv"):
            import pyarrow as pa
            import pyarrow.csv as pcsv

            # Entity keys and categorical features are text: read them as written. Type inference would
            # turn a key "00501" into the integer 501 (stored as the key "501") and refuse a categorical
            # column whose values all look like numbers.
            text = [*g.entities, *(f.name for f in g.features if f.dtype == "string")]
            options = pcsv.ConvertOptions(column_types=dict.fromkeys(text, pa.string()))
            table = pcsv.read_csv(path, convert_options=options)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    res = store.ingest(args.group, table, source=args.source if args.source is not None else path)
    return _print(
        res, args.json, f"{res['group']}@v{res['version']}: ingested {res['rows']} rows (ingest {res['seq']})"
    )


def _materialize(args) -> int:
    res = _store().materialize(args.group, start=args.start, end=args.end)
    return _print(
        res,
        args.json,
        f"{res['group']}@v{res['version']}: {res['entities']} entities, "
        f"{res['written']} written, {res['skipped_older']} kept newer",
    )


def _get(args) -> int:
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    keys = [tuple(k.split(",")) if "," in k else k for k in args.key]
    out = _store().get_online(features, keys, as_dict=True)
    cols = list(out)
    lines = ["\t".join(cols)] + [
        "\t".join("" if out[c][i] is None else str(out[c][i]) for c in cols) for i in range(len(keys))
    ]
    return _print(out, args.json, "\n".join(lines))


def _stats(args) -> int:
    st = _store().stats(args.group)
    lines = [f"{st['group']}@v{st['version']}: {st.get('rows', 0)} rows"]
    for name, f in st.get("features", {}).items():
        if "mean" in f and f["dtype"] != "bool":
            lines.append(
                f"  {name} ({f['dtype']}): count={f['count']} null_rate={f['null_rate']:.3f} mean={f['mean']} "
                f"std={f['std']} min={f['min']} p50={f['p50']} p99={f['p99']} max={f['max']}"
            )
        else:
            lines.append(
                f"  {name} ({f['dtype']}): count={f['count']} null_rate={f['null_rate']:.3f} top={f['top_k'][:5]}"
            )
    return _print(st, args.json, "\n".join(lines))


def _lineage(args) -> int:
    lin = _store().lineage(args.group)
    lines = [f"{lin['group']}"]
    for v in lin["versions"]:
        models = ", ".join(f"{m['model']}:{m['version']}" for m in v["models"]) or "-"
        lines.append(
            f"  v{v['version']}: source={v['source'] or '-'} ingests={len(v['ingests'])} "
            f"materializations={len(v['materializations'])} models={models}"
        )
    if lin.get("note"):
        lines.append(f"  ({lin['note']})")
    return _print(lin, args.json, "\n".join(lines))


def _list(args) -> int:
    groups = _store().list_groups()
    lines = [
        f"{g['name']}@v{g['version']}\tentities={','.join(g['spec']['entities'])}\t"
        f"features={len(g['spec']['features'])}\trows={g['rows']}"
        for g in groups
    ]
    return _print(groups, args.json, "\n".join(lines) or "(no feature groups)")
