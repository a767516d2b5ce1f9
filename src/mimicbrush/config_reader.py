"""Strict, typed reading of a YAML mapping, shared by the training config and its `data:` section.

A `Section` is one mapping; each read names the key, checks the type and range, and records that
the key is known, so `finish()` can report the first unknown key with its full dotted path (and
the closest known key). Every error is a `ConfigError` naming that path, e.g.
`optim.lrr: unknown key (known keys: ...); did you mean 'lr'?`. Relative paths are taken relative
to the config file's folder and made absolute.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError


class Section:
    """One mapping of the config: typed reads that remember which keys were read."""

    def __init__(self, raw: Any, name: str, base_dir: Path):
        self.given = raw is not None  # `video: null` counts as absent
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{name or 'config'}: expected a mapping, got {type_name(raw)}")
        self.raw = dict(raw)
        self.name = name
        self.base_dir = Path(base_dir)
        self._read: list[str] = []

    # --- bookkeeping ---------------------------------------------------------------------------

    def where(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def take(self, key: str, default: Any) -> Any:
        """The raw value (or `default` when the key is absent); marks the key as known."""
        self._read.append(key)
        return self.raw.get(key, default)

    def finish(self) -> None:
        """Refuse any key no read asked for."""
        for key in self.raw:
            if key not in self._read:
                raise ConfigError(unknown_key(self.where(key), key, list(dict.fromkeys(self._read))))

    def child(self, key: str) -> Section:
        return Section(self.take(key, None), self.where(key), self.base_dir)

    # --- scalars --------------------------------------------------------------------------------

    def number(self, key, default, *, minimum=None, maximum=None, exclusive_minimum=False, optional=False):
        value = self.take(key, default)
        if value is None and optional:
            return None
        return check_number(value, self.where(key), minimum, maximum, exclusive_minimum)

    def integer(self, key, default, *, minimum=None, maximum=None, multiple_of=None, optional=False) -> int | None:
        value = self.take(key, default)
        if value is None and optional:
            return None
        return check_integer(value, self.where(key), minimum, maximum, multiple_of)

    def boolean(self, key, default) -> bool:
        value = self.take(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)}: expected true or false, got {type_name(value)}")
        return value

    def string(self, key, default, *, optional=False) -> str | None:
        value = self.take(key, default)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)}: expected a non-empty string, got {type_name(value)}")
        return value

    def choice(self, key, default, choices, *, optional=False) -> str | None:
        value = self.take(key, default)
        if value is None and optional:
            return None
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    # --- collections ----------------------------------------------------------------------------

    def number_list(self, key, default, *, length, minimum=None, maximum=None) -> tuple[float, ...]:
        value = self.take(key, default)
        where = self.where(key)
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ConfigError(f"{where}: expected a list of {length} numbers, got {value!r}")
        return tuple(check_number(item, where, minimum, maximum) for item in value)

    def number_pair(self, key, default, *, minimum=None, maximum=None) -> tuple[float, float]:
        """[low, high] with low <= high."""
        low, high = self.number_list(key, default, length=2, minimum=minimum, maximum=maximum)
        if low > high:
            raise ConfigError(f"{self.where(key)}: first value must not exceed the second, got [{low:g}, {high:g}]")
        return (low, high)

    def integer_pair(self, key, default, *, minimum=None) -> tuple[int, int]:
        """[low, high] integers with low <= high."""
        value = self.take(key, default)
        where = self.where(key)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{where}: expected a list of two integers, got {value!r}")
        low, high = (check_integer(item, where, minimum, None, None) for item in value)
        if low > high:
            raise ConfigError(f"{where}: first value must not exceed the second, got [{low}, {high}]")
        return (low, high)

    def string_list(self, key, default, choices) -> tuple[str, ...]:
        """Distinct entries, each one of `choices`."""
        value = self.take(key, default)
        where = self.where(key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type_name(value)}")
        for item in value:
            if item not in choices:
                raise ConfigError(f"{where}: unknown entry {item!r} (expected some of {', '.join(choices)})")
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: an entry is listed twice")
        return tuple(value)

    def items(self, key) -> list[Any]:
        """A list (absent or null: empty), its entries unchecked."""
        value = self.take(key, [])
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{self.where(key)}: expected a list, got {type_name(value)}")
        return list(value)

    def mapping(self, key) -> dict[str, Any]:
        """A mapping, copied, its entries unchecked (absent: empty)."""
        value = self.take(key, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.where(key)}: expected a mapping, got {type_name(value)}")
        return copy.deepcopy(dict(value))

    def weights(self, key, default, allowed) -> dict[str, float]:
        """A non-empty mapping kind -> weight >= 0, kinds from `allowed`, one weight positive."""
        where = self.where(key)
        value = self.take(key, default)
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(f"{where}: expected a mapping of kind to weight, got {value!r}")
        weights = {}
        for kind, weight in value.items():
            if kind not in allowed:
                raise ConfigError(unknown_key(f"{where}.{kind}", kind, allowed))
            weights[kind] = check_number(weight, f"{where}.{kind}", 0.0, None)
        if sum(weights.values()) <= 0:
            raise ConfigError(f"{where}: at least one weight must be positive")
        return weights

    # --- paths ----------------------------------------------------------------------------------

    def path(self, key, default, *, optional=False) -> Path | None:
        """An absolute path (relative ones are relative to the config's folder)."""
        value = self.take(key, default)
        if value is None:
            if optional:
                return None
            raise ConfigError(f"{self.where(key)}: a path is required")
        return self._resolve(value, self.where(key))

    def path_list(self, key) -> tuple[Path, ...]:
        """Absolute paths; a single path is accepted unwrapped."""
        where = self.where(key)
        value = self.take(key, [])
        if isinstance(value, (str, Path)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of paths, got {type_name(value)}")
        return tuple(self._resolve(item, f"{where}[{index}]") for index, item in enumerate(value))

    def source(self, key) -> str | None:
        """A local path (made absolute, relative to the config) or a hub id `owner/name`."""
        value = self.take(key, None)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)}: expected a path or hub id, got {type_name(value)}")
        local = self.base_dir / Path(value).expanduser()
        if local.exists() or value.startswith((".", "/", "~")) or value.count("/") != 1:
            return os.path.abspath(local)
        return value

    def _resolve(self, value: Any, where: str) -> Path:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path, got {type_name(value)}")
        # absolute: clip paths key the SSIM cache, and runs may start from another folder
        return Path(os.path.abspath(self.base_dir / Path(value).expanduser()))


def unknown_key(where: str, key: Any, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{where}: unknown key (known keys: {', '.join(known)}){hint}"


def check_number(value, where, minimum=None, maximum=None, exclusive_minimum=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {type_name(value)}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ConfigError(f"{where}: must be {'above' if exclusive_minimum else 'at least'} {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where}: must be at most {maximum:g}, got {value:g}")
    return float(value)


def check_integer(value, where, minimum=None, maximum=None, multiple_of=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {type_name(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where}: must be at most {maximum}, got {value}")
    if multiple_of is not None and value % multiple_of:
        raise ConfigError(f"{where}: must be a multiple of {multiple_of}, got {value}")
    return value


def type_name(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"
