"""A generator's identity by its weights: a hash of every parameter, so files made for one network
(SAT3D matrices, StyleSpace statistics, global directions) refuse another of the same layout."""

from __future__ import annotations

import hashlib
import weakref


def generator_fingerprint(G) -> str:
    """sha256 over the generator's state (names and bytes), so a file made for it knows its network."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cached_fingerprint(G) -> str:
    """generator_fingerprint (a hash of every weight), computed once per loaded generator."""
    try:
        if G not in _FINGERPRINTS:
            _FINGERPRINTS[G] = generator_fingerprint(G)
        return _FINGERPRINTS[G]
    except TypeError:  # not weak-referenceable: hash every time
        return generator_fingerprint(G)


def lineage_fingerprints(G) -> set[str]:
    """G's own fingerprint and, for a pivotally tuned copy (methods.reconstruction), the one of the network
    it was tuned from: files made for that network (SAT3D matrices) apply to its tuned copies too."""
    out = {cached_fingerprint(G)}
    base = getattr(G, "tuned_from", None)
    if isinstance(base, dict) and isinstance(base.get("fingerprint"), str):
        out.add(base["fingerprint"])
    return out
