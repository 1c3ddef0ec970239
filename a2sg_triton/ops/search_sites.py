"""Where the A²SG search plugs into the neuron ops: a registry of search sites.

``a2sg_triton.search.controller.A2SG`` registers each layer it adapts under a fresh integer key; an
armed layer passes its key to its op, whose backward then runs the neuron's searching op
(``a2sg_triton::<neuron>_bwd_search``, defined beside the neuron), which finds the controller here
and calls its search. The ops and the controller both import this module, so neither looks the
other up by name.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, NamedTuple, Optional

import torch


class SearchSite(NamedTuple):
    """The controller that owns a search key, the layer's name in that controller, and the layer."""

    controller: Any
    name: str
    layer: Any  # an a2sg_triton.nn.SearchedNeuron (a layer above this module)


# key -> (weak reference to the controller, layer name, weak reference to the layer)
SEARCH_SITES: dict[int, tuple[weakref.ref, str, weakref.ref]] = {}


def register_search_site(key: int, controller: Any, name: str, layer: Any) -> None:
    """Registers ``layer`` (named ``name`` in ``controller``) under ``key``; the layer's previous
    registration, if any, is dropped (a layer belongs to the controller created for it last)."""
    SEARCH_SITES.pop(getattr(layer, "search_key", -1), None)
    SEARCH_SITES[key] = (weakref.ref(controller), name, weakref.ref(layer))
    layer.search_key, layer.search_armed = key, False


def forget_search_sites(keys: list[int]) -> None:
    """Drops the sites of ``keys`` (a controller's, when it is garbage-collected)."""
    for key in keys:
        SEARCH_SITES.pop(key, None)


def search_site_owner(key: int) -> Optional[SearchSite]:
    """The site registered under ``key``, or None if it, its controller or its layer is gone."""
    site = SEARCH_SITES.get(key)
    if site is None:
        return None
    controller, layer = site[0](), site[2]()
    return None if controller is None or layer is None else SearchSite(controller, site[1], layer)


def search_site(key: int) -> SearchSite:
    """The live site of ``key`` (what a searching op calls); raises if its controller is gone."""
    site = search_site_owner(key)
    if site is None:
        raise RuntimeError(f"no live A2SG controller for search key {key}: keep the controller alive "
                           "while the model trains")
    return site


# A searching op waits on the host (the search needs each evaluation's values there), so it must never
# be captured into a CUDA graph: tagged cudagraph_unsafe, torch.compile's CUDA graphs
# (mode="reduce-overhead") partition around it or skip the graph that holds it. Torch versions without
# the tag cannot be told: do not capture an armed iteration yourself there (docs/search.md).
CUDAGRAPH_UNSAFE: dict[str, Any] = (
    {"tags": (torch.Tag.cudagraph_unsafe,)}
    if hasattr(torch.Tag, "cudagraph_unsafe") and "tags" in inspect.signature(torch.library.custom_op).parameters
    else {})
