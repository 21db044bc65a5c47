"""The interface file, parsed, and strict checks of values against its types.

python-varlink's parser turns the IDL into objects; its own parameter filter is too lenient (enum
values and `object` are unchecked, floats pass as ints: see shared notes), so values are checked
here. A mismatch raises `BadValue(path)`, path being the dotted name of the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import varlink
from varlink import scanner as s

INTERFACE_NAME = "io.beemesh.Mesh"


class BadValue(Exception):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Method:
    name: str
    in_type: s._Struct
    out_type: s._Struct


class Interface:
    """One parsed interface: its text (for GetInterfaceDescription), methods, types, errors."""

    def __init__(self, text: str):
        self.text = text
        parsed = varlink.Interface(text)
        self.name: str = parsed.name
        self.methods: dict[str, Method] = {}
        self.types: dict[str, object] = {}
        self.errors: dict[str, s._Struct] = {}
        for name, member in parsed.members.items():
            if isinstance(member, s._Method):
                self.methods[name] = Method(name, member.in_type, member.out_type)
            elif isinstance(member, s._Error):
                self.errors[name] = member.type
            elif isinstance(member, s._Alias):
                self.types[name] = member.type

    @classmethod
    def load(cls) -> "Interface":
        """The io.beemesh.Mesh interface shipped inside the package."""
        text = resources.files("beemeshd").joinpath(f"{INTERFACE_NAME}.varlink").read_text()
        return cls(text)

    # -- checks ------------------------------------------------------------------------------
    def check_struct(self, struct: s._Struct, value: object, path: str = "") -> None:
        """Check a method's parameters / reply / error parameters: unknown fields and missing
        required fields are errors; optional fields may be absent or null."""
        if not isinstance(value, dict):
            raise BadValue(path or "parameters", "expected an object")
        for key in value:
            if key not in struct.fields:
                raise BadValue(_join(path, key), "unknown field")
        for key, ftype in struct.fields.items():
            if key in value:
                self.check(ftype, value[key], _join(path, key))
            elif not isinstance(ftype, s._Maybe):
                raise BadValue(_join(path, key), "missing")

    def check(self, vtype, value, path: str) -> None:  # noqa: C901 - one branch per IDL type
        if isinstance(vtype, s._Maybe):
            if value is not None:
                self.check(vtype.element_type, value, path)
            return
        if value is None:
            raise BadValue(path, "must not be null")
        if isinstance(vtype, bool):  # test bool before int: bool is an int subclass
            if not isinstance(value, bool):
                raise BadValue(path, "expected a boolean")
        elif isinstance(vtype, int):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadValue(path, "expected an integer")
            if isinstance(value, float) and not value.is_integer():
                raise BadValue(path, "expected an integer, got a fraction")
        elif isinstance(vtype, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadValue(path, "expected a number")
        elif isinstance(vtype, str):
            if not isinstance(value, str):
                raise BadValue(path, "expected a string")
        elif isinstance(vtype, s._Object):
            # Foreign JSON: the method checks its shape itself.
            if not isinstance(value, (dict, list)):
                raise BadValue(path, "expected a JSON object")
        elif isinstance(vtype, s._Array):
            if not isinstance(value, list):
                raise BadValue(path, "expected an array")
            for i, item in enumerate(value):
                self.check(vtype.element_type, item, f"{path}[{i}]")
        elif isinstance(vtype, s._Dict):
            if not isinstance(value, dict):
                raise BadValue(path, "expected a map")
            for k, item in value.items():
                self.check(vtype.element_type, item, f"{path}[{k}]")
        elif isinstance(vtype, set):  # [string]()
            if not isinstance(value, dict):
                raise BadValue(path, "expected a set (map of empty objects)")
        elif isinstance(vtype, s._CustomType):
            self.check(self.types[vtype.name], value, path)
        elif isinstance(vtype, s._Enum):
            if not isinstance(value, str) or value not in vtype.fields:
                allowed = ", ".join(vtype.fields)
                raise BadValue(path, f"expected one of: {allowed}")
        elif isinstance(vtype, s._Struct):
            self.check_struct(vtype, value, path)
        else:  # pragma: no cover - the parser produces nothing else
            raise TypeError(f"unknown IDL type {vtype!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
