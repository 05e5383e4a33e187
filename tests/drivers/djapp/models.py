"""Models of the Django check: accounts sharded by their id (keys chosen by
the cluster), entries co-located with their account (sharded by account_id,
the key of a composite primary key)."""

from django.db import models


class Account(models.Model):
    name = models.CharField(max_length=40)
    balance = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        app_label = "djapp"


class Entry(models.Model):
    pk = models.CompositePrimaryKey("account_id", "n")
    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    n = models.IntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        app_label = "djapp"
