"""The Kubernetes name and label syntaxes.

Each check returns None when the value is fine, else a sentence saying what was expected,
so the caller can prefix it with the field path and the offending value.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_IANA_SVC = re.compile(r"[-a-z0-9]+")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")  # label names and values
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

_LABEL_CHARS = "lower-case letters, digits and '-', starting and ending with a letter or digit"
_QUALIFIED_CHARS = "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"


def _too_long(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"must be no more than {limit} characters (found {len(value)})"
    return None


def dns1123_label(value: str) -> str | None:
    """Namespaces, container and volume names, Deployment/StatefulSet names."""
    if not value:
        return "must not be empty"
    if _LABEL.fullmatch(value) is None:
        return f"must be a DNS-1123 label: {_LABEL_CHARS}"
    return _too_long(value, 63)


def dns1123_subdomain(value: str) -> str | None:
    """Pod names: dot-separated DNS-1123 labels."""
    if not value:
        return "must not be empty"
    if _SUBDOMAIN.fullmatch(value) is None:
        return f"must be a DNS-1123 subdomain: {_LABEL_CHARS}, plus '.'"
    return _too_long(value, 253)


def dns1035_label(value: str) -> str | None:
    """Service names: like a DNS-1123 label but must start with a letter."""
    if not value:
        return "must not be empty"
    if _DNS1035.fullmatch(value) is None:
        return ("must be a DNS-1035 label: lower-case letters, digits and '-', "
                "starting with a letter and ending with a letter or digit")
    return _too_long(value, 63)


def iana_svc_name(value: str) -> str | None:
    """Named ports (RFC 6335): at most 15 of [a-z0-9-], at least one letter, no '--'."""
    if not value:
        return "must not be empty"
    if _IANA_SVC.fullmatch(value) is None:
        return "must contain only lower-case letters, digits and '-'"
    if not any("a" <= ch <= "z" for ch in value):
        return "must contain at least one letter"
    if "--" in value:
        return "must not contain '--'"
    if value.startswith("-") or value.endswith("-"):
        return "must not start or end with '-'"
    return _too_long(value, 15)


def qualified_name(value: str) -> str | None:
    """Label and annotation keys: an optional DNS-subdomain prefix and '/', then a name."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "the prefix before '/' must not be empty"
        problem = dns1123_subdomain(prefix)
        if problem:
            return f"the prefix before '/' {problem}"
    if not name:
        return "the name part must not be empty"
    if _QUALIFIED.fullmatch(name) is None:
        return f"the name part must consist of {_QUALIFIED_CHARS}"
    problem = _too_long(name, 63)
    return f"the name part {problem}" if problem else None


def label_value(value: str) -> str | None:
    """Label values: may be empty, else like the name part of a key."""
    if value == "":
        return None
    if _QUALIFIED.fullmatch(value) is None:
        return f"must be empty or consist of {_QUALIFIED_CHARS}"
    return _too_long(value, 63)


def env_var_name(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if _ENV_NAME.fullmatch(value) is None:
        return "must consist of letters, digits, '_', '-' and '.', and must not start with a digit"
    return None
