"""confd's Kubernetes side channels ride the shared reflector: scoping, the cache it feeds, passwords."""

from __future__ import annotations

import base64

from confd_client.sources import NamespacedResource, ObjectCache
from typha.kube.reflector import Event, EventType
from typha.model.resources import by_key


def test_secrets_are_listed_and_watched_in_one_namespace():
    secrets = by_key("secrets")
    scoped = NamespacedResource(secrets.group, secrets.version, secrets.plural, secrets.kind, True,
                                namespace="calico-system")
    assert scoped.path() == "/api/v1/namespaces/calico-system/secrets"
    assert scoped.key == "secrets"


def test_the_cache_follows_sets_and_deletes_and_reports_changes():
    changes: list[int] = []
    cache = ObjectCache(lambda: changes.append(1))
    secret = {"metadata": {"namespace": "ns", "name": "s", "resourceVersion": "1"},
              "data": {"k": base64.b64encode(b"pw").decode()}}
    cache.on_events(by_key("secrets"), [Event(EventType.SET, secret)])
    assert cache.get("ns", "s") == secret
    assert not cache.synced.is_set()
    cache.on_synced(by_key("secrets"))
    assert cache.synced.is_set()
    cache.on_events(by_key("secrets"), [Event(EventType.DELETE, {"metadata": {"namespace": "ns", "name": "s"}})])
    assert cache.get("ns", "s") is None
    assert cache.objects() == []
    cache.on_events(by_key("secrets"), [])
    assert len(changes) == 2  # an empty batch is no change
