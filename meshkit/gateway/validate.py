"""Typed readers for JSON request bodies (they live in :mod:`meshkit.protocol.fields`)."""

from __future__ import annotations

from ..protocol.fields import (
    message_list,
    objects,
    opt_bool,
    opt_int,
    opt_list,
    opt_number,
    opt_object,
    opt_stop,
    opt_str,
    parse_object,
    role,
)

__all__ = [
    "message_list",
    "objects",
    "opt_bool",
    "opt_int",
    "opt_list",
    "opt_number",
    "opt_object",
    "opt_stop",
    "opt_str",
    "parse_object",
    "role",
]
