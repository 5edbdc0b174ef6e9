"""A case-insensitive, order-preserving multi-dict of HTTP request headers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping


class Headers:
    """Request headers as the ASGI server hands them over, looked up case-insensitively.

    Built from ``(name, value)`` pairs of ``str`` or ``bytes`` (bytes are decoded as
    latin-1, as HTTP/1.1 header octets are), or from a mapping. Repeated names keep every
    value in arrival order.
    """

    __slots__ = ("_first", "_items")

    def __init__(
        self,
        items: Iterable[tuple[str | bytes, str | bytes]] | Mapping[str, str] = (),
    ) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: tuple[tuple[str, str], ...] = tuple(
            (_text(name).lower(), _text(value)) for name, value in pairs
        )
        # A request's headers are looked up a couple of dozen times: index the first values.
        self._first: dict[str, str] = {}
        for key, value in self._items:
            self._first.setdefault(key, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        return self._first.get(name.lower(), default)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in arrival order."""
        lname = name.lower()
        return [value for key, value in self._items if key == lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
