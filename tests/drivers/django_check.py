"""A small Django app: the same ORM code against Pieskieo and against one
plain PostgreSQL; every result must be equal.

usage: django_check.py PROXY_URI PLAIN_URI

Tables are made by `migrate --run-syncdb` through each. Prints one line per
step and "django ok" when every step gave the same answer on both.
"""

import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).parent))

import django
from django.conf import settings


def db(uri):
    u = urlparse(uri)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": u.path.lstrip("/"),
        "USER": u.username,
        "PASSWORD": u.password,
        "HOST": u.hostname,
        "PORT": u.port,
    }


def app(alias, seen):
    from django.core.management import call_command
    from django.db import transaction
    from django.db.models import Avg, Count, Max, Sum

    from djapp.models import Account, Entry

    def step(name, value):
        seen.append((name, value))

    call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
    A = Account.objects.using(alias)
    E = Entry.objects.using(alias)
    made = [A.create(name=f"a{i}", balance=Decimal(100 + i)) for i in range(9)]
    step("created ids", [a.id for a in made])
    # bulk_create over shards: Django 5.2 sends INSERT ... SELECT * FROM UNNEST(arrays).
    bulk = A.bulk_create([Account(name=f"b{i}", balance=Decimal(i)) for i in range(6)])
    step("bulk ids", sorted(a.id for a in bulk))
    step("bulk objects", sorted((a.id, a.name) for a in bulk))
    step("stored", list(A.order_by("id").values_list("id", "name")))
    E.bulk_create(
        [Entry(account_id=a.id, n=n, amount=Decimal(n * 3)) for a in made for n in range(a.id % 3)]
    )
    step("get", (lambda a: (a.id, a.name, a.balance))(A.get(pk=made[2].id)))
    step("filter", list(A.filter(balance__gt=104).order_by("id").values_list("name", flat=True)))
    step("exclude", sorted(A.exclude(name__startswith="b").values_list("name", flat=True)))
    step("page", list(A.order_by("-balance", "id").values_list("id", flat=True)[2:6]))
    step("count", A.filter(balance__lt=105).count())
    step("aggregate", A.aggregate(s=Sum("balance"), m=Max("name"), a=Avg("balance")))
    step(
        "annotate",
        list(E.values("n").annotate(c=Count("*"), t=Sum("amount")).order_by("n")),
    )
    step("entries of one", list(E.filter(account_id=made[4].id).order_by("n").values_list("n", "amount")))
    a, b = made[0].id, made[1].id
    with transaction.atomic(using=alias):
        x = A.select_for_update().get(pk=a)
        y = A.select_for_update().get(pk=b)
        x.balance -= 10
        y.balance += 10
        x.save()
        y.save()
    try:
        with transaction.atomic(using=alias):
            A.filter(pk=a).update(balance=0)
            A.filter(pk=b).update(balance=0)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    step("after transfers", list(A.filter(pk__in=[a, b]).order_by("id").values_list("id", "balance")))
    E.filter(account_id=made[5].id).delete()
    step("entries left", E.count())


def main():
    proxy, plain = sys.argv[1], sys.argv[2]
    settings.configure(
        DATABASES={"default": db(plain), "plain": db(plain), "proxy": db(proxy)},
        INSTALLED_APPS=["djapp"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
    )
    django.setup()
    want, got, failed = [], [], []
    app("plain", want)
    try:
        app("proxy", got)
    except Exception as e:
        failed.append(f"proxy raised after {len(got)} steps: {type(e).__name__}: {e}")
    for (name, w), g in zip(want, got + [None] * (len(want) - len(got))):
        if g is None or g[1] != w:
            failed.append(f"{name}: plain {w!r}, proxy {g[1] if g else None!r}")
        else:
            print(f"{name}: {w!r}")
    if failed:
        print("\n".join(failed))
        sys.exit(1)
    print("django ok")


if __name__ == "__main__":
    main()
