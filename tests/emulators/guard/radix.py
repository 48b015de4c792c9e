"""SGLang's radix cache of computed prompt prefixes, as token ids (no KV values).

After ``python/sglang/srt/mem_cache/radix_cache.py`` (``RadixCache``, page size 1, LRU policy):
a tree of token-id segments; ``match_prefix`` walks it and splits the segment a match ends
inside; ``insert`` adds what is new; ``evict`` frees whole leaf segments, least recently used
first, putting a parent that becomes a leaf back in line.  ``extra_key`` (a request's
``cache_salt`` + ``extra_key``) keeps namespaces disjoint, as ``get_child_key`` does.

The scheduler's use of it (``schedule_batch.py``, ``Req.init_next_round_input`` /
``adjust_max_prefix_ids``): a request reuses at most ``len(input_ids) - 1`` tokens (so at least
one is computed), fewer with ``return_logprob`` and an explicit ``logprob_start_len``; when it
finishes, ``cache_finished_req`` inserts its prompt and output ids but the last output token,
whose KV was never computed.
"""

from __future__ import annotations

import heapq

ChildKey = int | tuple[str, int]


class _Node:
    __slots__ = ("children", "extra_key", "key", "parent", "tick")

    def __init__(self, key: list[int], parent: _Node | None, extra_key: str | None, tick: int):
        self.children: dict[ChildKey, _Node] = {}
        self.key = key
        self.parent = parent
        self.extra_key = extra_key
        self.tick = tick  # the last access, in the cache's own clock


def _child_key(extra_key: str | None, token: int) -> ChildKey:
    return token if extra_key is None else (extra_key, token)


def _common_length(key: list[int], ids: list[int], start: int) -> int:
    """How many tokens of ``key`` match ``ids`` from ``start`` on."""
    window = ids[start : start + len(key)]
    if window == key:
        return len(key)
    count = 0
    for mine, theirs in zip(key, window, strict=False):
        if mine != theirs:
            break
        count += 1
    return count


class RadixCache:
    """The token ids whose KV cache SGLang keeps; ``capacity`` in tokens (None: unbounded)."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        """Empty the cache (SGLang's ``flush_cache``)."""
        self._root = _Node([], None, None, 0)
        self._leaves: set[_Node] = set()
        self._clock = 0
        self.size = 0  # tokens held

    def match(self, ids: list[int], extra_key: str | None = None) -> int:
        """How many leading tokens of ``ids`` are cached (``match_prefix``)."""
        return self._descend(ids, extra_key)[1]

    def insert(self, ids: list[int], extra_key: str | None = None) -> None:
        """Cache ``ids``, then evict down to the capacity (``insert`` + ``evict``)."""
        node, done = self._descend(ids, extra_key)
        if done < len(ids):
            self._add_leaf(node, ids[done:], extra_key)
        self._evict()

    def _descend(self, ids: list[int], extra_key: str | None) -> tuple[_Node, int]:
        """The deepest node ``ids`` begins with, and how many tokens that is; a node the
        match ends inside is split there.  Every node passed counts as used now."""
        self._clock += 1
        node, matched = self._root, 0
        while matched < len(ids):
            child = node.children.get(_child_key(extra_key, ids[matched]))
            if child is None:
                break
            child.tick = self._clock
            length = _common_length(child.key, ids, matched)
            matched += length
            if length < len(child.key):
                return self._split(child, length), matched
            node = child
        return node, matched

    def _add_leaf(self, parent: _Node, key: list[int], extra_key: str | None) -> None:
        leaf = _Node(key, parent, extra_key, self._clock)
        parent.children[_child_key(extra_key, key[0])] = leaf
        self._leaves.discard(parent)
        self._leaves.add(leaf)
        self.size += len(key)

    def _split(self, child: _Node, length: int) -> _Node:
        """Put a node holding ``child``'s first ``length`` tokens above it (``_split_node``)."""
        parent = child.parent
        assert parent is not None  # the root is never split
        head = _Node(child.key[:length], parent, child.extra_key, child.tick)
        child.key = child.key[length:]
        child.parent = head
        head.children[_child_key(child.extra_key, child.key[0])] = child
        parent.children[_child_key(child.extra_key, head.key[0])] = head
        return head

    def _evict(self) -> None:
        """Free least recently used leaves until the cache fits its capacity."""
        if self.capacity is None or self.size <= self.capacity:
            return
        heap = [(leaf.tick, id(leaf), leaf) for leaf in self._leaves]
        heapq.heapify(heap)
        while self.size > self.capacity and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = self._delete_leaf(leaf)
            if parent is not self._root and not parent.children:
                self._leaves.add(parent)
                heapq.heappush(heap, (parent.tick, id(parent), parent))

    def _delete_leaf(self, leaf: _Node) -> _Node:
        parent = leaf.parent
        assert parent is not None
        del parent.children[_child_key(leaf.extra_key, leaf.key[0])]
        self._leaves.discard(leaf)
        self.size -= len(leaf.key)
        return parent
