"""Typed records on disk: dataclasses written as JSON and read back checked against their types.

A command's config, and what a run resolved and measured, are frozen dataclasses; they are
stored with :func:`to_json` and read with :func:`from_dict`, which rebuilds nested dataclasses,
tuples and optional fields from their annotations and refuses a field that is missing, unknown
or of the wrong type. Readers then use attributes, never string keys of a hand-built dict.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Point:
    ...     x: int
    ...     tags: tuple[str, ...] = ()
    >>> from_dict(Point, json.loads(to_json(Point(3, ("a",)))))
    Point(x=3, tags=('a',))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InvalidValueError, StoreError

__all__ = ["from_dict", "reading_stored", "to_dict", "to_json"]

T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    """A dataclass instance as plain JSON values (tuples become lists)."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"expected a dataclass instance, got {type(record).__name__}")
    return typing.cast(dict[str, Any], json.loads(to_json(record)))


def to_json(record: Any) -> str:
    """A dataclass instance as indented JSON with sorted keys."""
    return json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True)


def from_dict(cls: type[T], data: Any, *, where: str = "") -> T:
    """Rebuild a ``cls`` dataclass from JSON values, checking every field against its type.

    Fields missing from ``data`` take their default; a field without a default must be there.

    Raises:
        InvalidValueError: a missing or unknown field, or a value of the wrong type, named
            by its path (``where``).
    """
    return typing.cast(T, _convert(cls, data, where or cls.__name__))


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            raise _wrong(where, value, f"an object ({kind.__name__})")
        hints = typing.get_type_hints(kind)
        fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise InvalidValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        values = {}
        for name, field in fields.items():
            if name in value:
                values[name] = _convert(hints[name], value[name], f"{where}.{name}")
            elif (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise InvalidValueError(f"{where}: missing field {name}")
        return kind(**values)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except InvalidValueError:
                continue
        raise _wrong(where, value, " or ".join(_name(o) for o in options))
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _wrong(where, value, "a list")
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _wrong(where, value, f"a list of {len(args)} items")
            items = [
                _convert(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
        else:
            item = args[0] if args else Any
            items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, value, "an object")
        _, item = typing.get_args(kind) or (str, Any)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(where, value, "a number")
        return float(value)
    if kind is int or kind is str or kind is bool:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _wrong(where, value, kind.__name__)
        return value
    if kind is type(None):
        if value is not None:
            raise _wrong(where, value, "null")
        return None
    raise TypeError(f"{where}: cannot read a field of type {kind!r}")


def _name(kind: Any) -> str:
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))


def _wrong(where: str, value: Any, expected: str) -> InvalidValueError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidValueError(f"{where}: expected {expected}, got {shown}")


@contextlib.contextmanager
def reading_stored(directory: Path, what: str) -> Iterator[None]:
    """Read a run's stored files: a missing file or a record that does not fit its dataclass
    becomes one :class:`~iht.errors.StoreError` naming the directory and the file.

    Example:
        >>> with reading_stored(path, "a finished train run"):          # doctest: +SKIP
        ...     record = from_dict(TrainRecord, read_json(path / "config.json"))
    """
    try:
        yield
    except FileNotFoundError as exc:
        missing = Path(str(exc.filename)).name
        raise StoreError(f"{directory} is not {what}: {missing} is missing") from None
    except InvalidValueError as exc:
        raise StoreError(
            f"{directory} is not {what} of this iht version ({exc}); run it again"
        ) from None
