"""``fastml review list|show|resolve``: the human-oversight queue (:mod:`fastml.governance.review`)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("review", help="human oversight: predictions queued for a person to confirm or override")
    sub = p.add_subparsers(dest="review_command", metavar="COMMAND", required=True)
    c = sub.add_parser("list", help="queued predictions, oldest first (open ones by default)")
    c.add_argument("--status", default="open", choices=["open", "confirmed", "overridden", "all"])
    c.add_argument("--model", default=None, help="only this model's items")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=_list)
    c = sub.add_parser("show", help="one item with the features the model saw")
    c.add_argument("id", type=int)
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=_show)
    c = sub.add_parser("resolve", help="confirm the model's prediction or override it (audited)")
    c.add_argument("ids", type=int, nargs="+", metavar="ID", help="one or more item ids")
    c.add_argument("--decision", required=True, choices=["confirmed", "overridden"])
    c.add_argument("--reviewer", required=True, help="who decides (recorded in the audit log)")
    c.add_argument("--label", default=None, help="the label decided on (required to override); JSON or text")
    c.add_argument("--note", default="", help="why")
    c.add_argument("--json", action="store_true", help="print the resolved item as JSON")
    c.set_defaults(handler=_resolve)


def _list(args) -> int:
    from fastml.governance.review import ReviewQueue

    with ReviewQueue() as queue:
        items = queue.list(None if args.status == "all" else args.status, args.model)
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=2))
        return 0
    print(f"{'ID':>5} {'MODEL':<20} {'REQUEST':<18} {'PREDICTION':>10} {'CONFIDENCE':>10} {'STATUS':<10} REASON")
    for i in items:
        print(
            f"{i.id:>5} {i.model:<20} {i.request_id:<18} {json.dumps(i.prediction):>10} {i.confidence:>10.3f} "
            f"{i.status:<10} {i.reason}"
        )
    return 0


def _show(args) -> int:
    from fastml.governance.review import ReviewQueue

    with ReviewQueue() as queue:
        item = queue.get(args.id)
    doc = item.to_dict()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for k, v in doc.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def _resolve(args) -> int:
    from fastml.governance.review import ReviewQueue

    label = None
    if args.label is not None:
        try:
            label = json.loads(args.label)
        except json.JSONDecodeError:
            label = args.label
    done = []
    with ReviewQueue() as queue:
        for item_id in args.ids:  # in order; the first refusal stops (the ones before it stay resolved)
            item = queue.resolve(item_id, args.decision, args.reviewer, label=label, note=args.note)
            done.append(item)
            if not args.json:
                print(
                    f"review item {item.id} {item.status} by {item.reviewer}: final label {json.dumps(item.final_label)}"
                )
    if args.json:
        print(json.dumps(done[0].to_dict() if len(done) == 1 else [i.to_dict() for i in done], indent=2))
    return 0
