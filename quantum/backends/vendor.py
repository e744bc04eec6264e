"""Any vendor's ``cirq.Sampler``, named by import path and options (cirq-google, cirq-ionq, …).

The vendor SDK is imported only when the path is resolved, so the extra is needed only by those who use it.

Example:
    >>> sampler = sampler_from_import_path(  # doctest: +SKIP
    ...     "cirq_google:get_engine_sampler", processor_id="rainbow", project_id="my-project")
    >>> sampler = sampler_from_import_path(  # doctest: +SKIP
    ...     "cirq_ionq:Service", api_key="...", sampler_options={"target": "qpu"})
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import cirq

# Which optional extra provides a vendor package, for the ImportError's advice.
EXTRAS = {"cirq_google": "hardware", "cirq_ionq": "hardware", "pyqpanda3": "origin"}


def _resolve(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"import path {path!r} must look like 'package.module:factory' (e.g. 'cirq_ionq:Service')"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        extra = EXTRAS.get(module_name.split(".")[0])
        hint = (
            f"install the extra: pip install 'qtha[{extra}]'"
            if extra
            else "install the package that provides it"
        )
        raise ImportError(f"cannot import {module_name!r} for sampler {path!r} ({err}); {hint}") from err
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(
                f"{module_name!r} has no attribute {attribute!r} (from sampler path {path!r})"
            ) from None
    return target


def sampler_from_import_path(
    path: str, /, *, sampler_options: Mapping[str, Any] | None = None, **options: Any
) -> cirq.Sampler:
    """Build a sampler by calling ``package.module:factory(**options)``.

    If the factory returns a service rather than a sampler (cirq-ionq's ``Service``, cirq-google's ``Engine``),
    its ``sampler(**sampler_options)`` method is called to get one.

    Args:
        path: ``"package.module:callable"``; the callable may be a dotted attribute (``"mod:Class.create"``).
        sampler_options: keyword arguments for the service's ``sampler`` method, if one is needed.
        **options: keyword arguments for the factory (processor id, project, API key, target, …).

    Returns:
        The sampler.

    Raises:
        ImportError: the module is missing (the message names the qtha extra to install).
        AttributeError: the module has no such callable.
        TypeError: the factory did not produce a ``cirq.Sampler``.
    """
    factory = _resolve(path)
    if not callable(factory):
        raise TypeError(f"{path!r} resolves to {factory!r}, which is not callable")
    made = factory(**options)
    if not isinstance(made, cirq.Sampler) and callable(getattr(made, "sampler", None)):
        made = made.sampler(**dict(sampler_options or {}))
    if not isinstance(made, cirq.Sampler):
        raise TypeError(
            f"{path!r} produced a {type(made).__name__}, not a cirq.Sampler; point the path at a sampler factory "
            "or at a service with a .sampler() method"
        )
    return made
