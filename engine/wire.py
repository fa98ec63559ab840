"""The wire format: one cattrs converter for every JSON body the engine reads or writes.

Plans, status bodies, videos, errors, progress, webhook payloads, the HTTP execution view and the
JSON columns of the stores all go through :data:`converter`, built by :func:`make_converter`.
The rules are generic, so this module imports no model (models import it, never the reverse):

- every attrs class is a JSON object whose keys are its field names in camelCase
  (``aspect_ratio`` -> ``aspectRatio``), in field order;
- a field whose metadata has :data:`OMIT_IF_DEFAULT` is left out while it has its default
  (``baseExecutionId`` of a plan, ``error`` of a status body);
- tuples become lists and mappings dicts; anything else passes as it is.

``to_json(value)`` and ``from_json(obj, cls)`` are the two calls the rest of the code makes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

#: Field metadata key: leave the field out of the JSON while it has its default value.
OMIT_IF_DEFAULT = "videoflow.omit_if_default"

T = TypeVar("T")
_CAMEL = re.compile(r"_([a-z0-9])")


@cache
def camel(name: str) -> str:
    """``aspect_ratio`` -> ``aspectRatio``: a field's wire name."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def make_converter() -> cattrs.Converter:
    """A converter that writes and reads every attrs value of the engine as camelCase JSON."""
    converter = cattrs.Converter()

    def unstructure_factory(cls: type) -> Any:
        fields = attrs.fields(cls)
        omit = [bool(a.metadata.get(OMIT_IF_DEFAULT)) for a in fields]
        names: dict[str, Any] = {
            a.name: override(rename=camel(a.name), omit_if_default=o)
            for a, o in zip(fields, omit, strict=True)
        }
        unstructure: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
            cls, converter, _cattrs_include_init_false=True, **names
        )
        if not any(o and not later for o, later in itertools.pairwise(omit)):
            return unstructure
        # cattrs writes omittable fields last; keep the declared order (a job's "dependsOn"
        # comes before its "output", as in the seed).
        order = [camel(a.name) for a in fields]

        def in_order(value: Any) -> dict[str, Any]:
            out = unstructure(value)
            return {key: out[key] for key in order if key in out}

        return in_order

    def structure_factory(cls: type) -> Any:
        names: dict[str, Any] = {
            a.name: override(rename=camel(a.name)) for a in attrs.fields(cls) if a.init
        }
        return make_dict_structure_fn(cls, converter, **names)

    converter.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    converter.register_structure_hook_factory(attrs.has, structure_factory)
    return converter


#: The one converter.
converter = make_converter()


def to_json(value: Any) -> Any:
    """``value`` (an attrs value, or lists and dicts of them) as JSON-ready data."""
    return converter.unstructure(value)


def from_json(obj: Any, cls: type[T]) -> T:
    """Build a ``cls`` from JSON data written by :func:`to_json`.

    Raises ``cattrs`` errors (subclasses of ``Exception``) on data of the wrong shape; callers
    that read untrusted input check it first or translate those errors.
    """
    return converter.structure(obj, cls)
