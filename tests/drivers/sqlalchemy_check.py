"""SQLAlchemy 2 ORM on psycopg 3: the same application code against Pieskieo
and against one plain PostgreSQL; every result must be equal.

usage: sqlalchemy_check.py PROXY_URI PLAIN_URI

Parents are sharded by their bigserial id (keys chosen by the cluster),
children by parent_id (co-located with their parent). Prints one line per
step and "sqlalchemy ok" when every step gave the same answer on both.
"""

import sys
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    Numeric,
    String,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    children: Mapped[list["Child"]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "children"
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String(40))
    parent: Mapped[Parent] = relationship(back_populates="children")


def app(uri, seen):
    """The application: records what it saw, step by step, in `seen`."""
    engine = create_engine(uri.replace("postgres://", "postgresql+psycopg://", 1))
    def step(name, value):
        seen.append((name, value))

    Base.metadata.create_all(engine)
    with Session(engine) as s:
        # Keys chosen by the cluster, read back through RETURNING.
        ps = [Parent(name=f"p{i}", balance=Decimal(100 + i)) for i in range(12)]
        s.add_all(ps)
        s.commit()
        ids = sorted(p.id for p in ps)
        step("parent ids", ids)
        # Each object got the key its row was stored with.
        step("objects", sorted((p.id, p.name) for p in ps))
        s.expire_all()
        step("stored", s.execute(select(Parent.id, Parent.name).order_by(Parent.id)).all())
        for p in ps:
            for n in range(p.id % 4):
                s.add(Child(parent_id=p.id, n=n, note=f"c{p.id}-{n}"))
        s.commit()
        # Bulk insert over shards.
        s.execute(
            insert(Child),
            [{"parent_id": i, "n": 10, "note": "bulk"} for i in ids],
        )
        s.commit()
        step("get", (lambda p: (p.id, p.name, p.balance))(s.get(Parent, ids[3])))
        step(
            "filter",
            s.scalars(select(Parent.name).where(Parent.balance > 105).order_by(Parent.id)).all(),
        )
        step(
            "exclude",
            sorted(s.scalars(select(Parent.name).where(~(Parent.name == "p2"))).all()),
        )
        step(
            "page",
            s.scalars(select(Parent.id).order_by(Parent.balance.desc()).limit(4).offset(2)).all(),
        )
        step("count", s.scalar(select(func.count()).select_from(Parent)))
        step(
            "aggregate",
            s.execute(
                select(func.sum(Parent.balance), func.min(Parent.name), func.avg(Parent.balance))
            ).all(),
        )
        step(
            "group",
            s.execute(
                select(Child.n, func.count(), func.max(Child.note))
                .group_by(Child.n)
                .order_by(Child.n)
            ).all(),
        )
        step(
            "children of one parent",
            [c.note for c in sorted(s.get(Parent, ids[5]).children, key=lambda c: c.n)],
        )
        step(
            "join on key",
            s.execute(
                select(Parent.name, Child.note)
                .join(Child, Child.parent_id == Parent.id)
                .where(Parent.id == ids[7])
                .order_by(Child.n)
            ).all(),
        )
        # Pagination with a total count, as list views do it.
        step("legacy count", s.query(Parent).filter(Parent.balance > 103).count())
        # An expression over aggregates with a bound parameter (:round_2):
        # two stages across shards, through the extended protocol.
        annotated = s.execute(
            select(func.round(func.avg(Parent.balance), 2), func.count() > 0)
        ).all()
        step("annotate", annotated)
    # select_for_update and a transaction over two shards: commit, rollback.
    a, b = ids[0], ids[1]
    with Session(engine) as s:
        with s.begin():
            pa = s.scalars(select(Parent).where(Parent.id == a).with_for_update()).one()
            pb = s.scalars(select(Parent).where(Parent.id == b).with_for_update()).one()
            pa.balance -= 10
            pb.balance += 10
        try:
            with s.begin():
                s.execute(update(Parent).where(Parent.id == a).values(balance=Parent.balance - 50))
                s.execute(update(Parent).where(Parent.id == b).values(balance=Parent.balance + 50))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        step(
            "after transfers",
            s.execute(select(Parent.id, Parent.balance).where(Parent.id.in_([a, b])).order_by(Parent.id)).all(),
        )
        s.execute(delete(Child).where(Child.parent_id == ids[2]))
        s.commit()
        step("children left", s.scalar(select(func.count()).select_from(Child)))
    engine.dispose()


def main():
    proxy, plain = sys.argv[1], sys.argv[2]
    want = []
    app(plain, want)
    got = []
    failed = []
    try:
        app(proxy, got)
    except Exception as e:  # report the step that broke
        failed.append(f"proxy raised after {len(got)} steps: {type(e).__name__}: {e}")
    for (name, w), g in zip(want, got + [None] * (len(want) - len(got))):
        if g is None or g[1] != w:
            failed.append(f"{name}: plain {w!r}, proxy {g[1] if g else None!r}")
        else:
            print(f"{name}: {w!r}")
    if failed:
        print("\n".join(failed))
        sys.exit(1)
    print("sqlalchemy ok")


if __name__ == "__main__":
    main()
