"""Which registered selectors match which labelled items, maintained incrementally.

Felix's `labelindex` does this job. The costs we keep (and that keep an update from being
quadratic in cluster size):
- a new or removed item evaluates every selector once (there is no cheaper way to learn which
  selectors an unseen label set matches);
- a label change re-evaluates only the selectors that read one of the changed label names
  (`by_label`), so relabelling a pod does not touch unrelated policies;
- a new selector evaluates every item once.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from typha.model.selector import Selector

ItemId = TypeVar("ItemId", bound=Hashable)
SelectorId = TypeVar("SelectorId", bound=Hashable)


class LabelIndex(Generic[ItemId, SelectorId]):
    def __init__(self) -> None:
        self._items: dict[ItemId, Mapping[str, str]] = {}
        self._selectors: dict[SelectorId, Selector] = {}
        self._by_label: dict[str, set[SelectorId]] = {}
        self._matches: dict[SelectorId, set[ItemId]] = {}
        self._item_matches: dict[ItemId, set[SelectorId]] = {}

    # -- items ------------------------------------------------------------------------------------

    def update_item(self, item: ItemId, labels: Mapping[str, str]) -> tuple[set[SelectorId], set[SelectorId]]:
        """Add or relabel an item; returns (selectors that started matching, selectors that stopped)."""
        old = self._items.get(item)
        self._items[item] = labels
        current = self._item_matches.setdefault(item, set())
        if old is None:
            candidates: set[SelectorId] | list[SelectorId] = list(self._selectors)
        else:
            changed = {k for k in old.keys() | labels.keys() if old.get(k) != labels.get(k)}
            if not changed:
                return set(), set()
            candidates = set()
            for name in changed:
                candidates |= self._by_label.get(name, set())
        started: set[SelectorId] = set()
        stopped: set[SelectorId] = set()
        for sid in candidates:
            now = self._selectors[sid].evaluate(labels)
            if now and sid not in current:
                current.add(sid)
                self._matches[sid].add(item)
                started.add(sid)
            elif not now and sid in current:
                current.discard(sid)
                self._matches[sid].discard(item)
                stopped.add(sid)
        return started, stopped

    def remove_item(self, item: ItemId) -> set[SelectorId]:
        """Forget an item; returns the selectors that matched it."""
        if self._items.pop(item, None) is None:
            return set()
        matched = self._item_matches.pop(item, set())
        for sid in matched:
            self._matches[sid].discard(item)
        return matched

    def labels_of(self, item: ItemId) -> Mapping[str, str] | None:
        return self._items.get(item)

    def selectors_matching(self, item: ItemId) -> set[SelectorId]:
        return self._item_matches.get(item, set())

    # -- selectors --------------------------------------------------------------------------------

    def add_selector(self, sid: SelectorId, selector: Selector) -> set[ItemId]:
        """Register (or replace) a selector; returns the items it matches."""
        if sid in self._selectors:
            if self._selectors[sid] == selector:
                return set(self._matches[sid])
            self.remove_selector(sid)
        self._selectors[sid] = selector
        for name in selector.label_names():
            self._by_label.setdefault(name, set()).add(sid)
        matched = {item for item, labels in self._items.items() if selector.evaluate(labels)}
        self._matches[sid] = matched
        for item in matched:
            self._item_matches[item].add(sid)
        return set(matched)

    def remove_selector(self, sid: SelectorId) -> set[ItemId]:
        selector = self._selectors.pop(sid, None)
        if selector is None:
            return set()
        for name in selector.label_names():
            owners = self._by_label.get(name)
            if owners is not None:
                owners.discard(sid)
                if not owners:
                    del self._by_label[name]
        matched = self._matches.pop(sid, set())
        for item in matched:
            self._item_matches[item].discard(sid)
        return matched

    def matches(self, sid: SelectorId) -> set[ItemId]:
        return self._matches.get(sid, set())

    def __contains__(self, sid: object) -> bool:
        return sid in self._selectors
