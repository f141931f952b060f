"""TensorFlow-era NVlabs/stylegan2 network pickles written WITHOUT TensorFlow.

The published files (`stylegan2-ffhq-config-f.pkl`, ...) pickle a tuple `(G, D, Gs)` of
`dnnlib.tflib.network.Network` objects (protocol 4): NEWOBJ of the class, then BUILD with the
state dict `{version, name, static_kwargs, components, build_module_src, build_func_name,
variables}` in that order; `variables` is a list of `(local name, value)` in creation order, values
float32 arrays and numpy.float32 scalars for shape [].  numpy 1.x pickled those through
`numpy.core.multiarray._reconstruct` / `numpy.core.multiarray.scalar`; `write_networks` writes that
spelling (or, with `numpy1_names=False`, whatever this numpy writes: `numpy._core` under numpy 2).
The fake `dnnlib.tflib.network` module exists only while a pickle is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from helpers.paths import load_fixture_weights_module

TF_FIXTURE = "stylegan2_tf_32"
STATE_KEYS = ("version", "name", "static_kwargs", "components", "build_module_src", "build_func_name", "variables")
DEFAULT_SRC = "# networks_stylegan2.py (stand-in text, never run)\nimport tensorflow as tf\n"

# numpy's own reconstructors, whatever module this numpy version keeps them in.
_NP_RECONSTRUCT = np.zeros(1, np.float32).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]
_NUMPY1_NAMES = {id(_NP_RECONSTRUCT): "_reconstruct", id(_NP_SCALAR): "scalar"}


@contextlib.contextmanager
def fake_tf_modules():
    """`dnnlib.tflib.network.Network` just long enough for pickle to name it."""

    class Network:
        def __init__(self, state: dict) -> None:
            self._state = state

        def __getstate__(self) -> dict:
            return self._state

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    names = ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network")
    mods = {name: types.ModuleType(name) for name in names}
    mods["dnnlib.tflib.network"].Network = Network
    mods["dnnlib.tflib"].network = mods["dnnlib.tflib.network"]
    mods["dnnlib"].tflib = mods["dnnlib.tflib"]
    assert not any(name in sys.modules for name in names)
    sys.modules.update(mods)
    try:
        yield Network
    finally:
        for name in names:
            sys.modules.pop(name, None)


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler, naming numpy's reconstructors as numpy 1.x did."""

    def save_global(self, obj: Any, name: Any = None) -> None:
        alias = _NUMPY1_NAMES.get(id(obj))
        if alias is None:
            return super().save_global(obj, name)
        self.save("numpy.core.multiarray")  # protocol 4: module and name, then STACK_GLOBAL
        self.save(alias)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def tf_value(value: Any, shape) -> Any:
    """A variable's value as TensorFlow's session.run gives it: float32 array, numpy.float32 for []."""
    arr = np.asarray(value, dtype=np.float32).reshape(shape)
    return np.float32(arr) if arr.ndim == 0 else arr


def network_state(name, build_func_name, static_kwargs, components, variables, build_module_src=DEFAULT_SRC,
                  version=4) -> dict:
    """A Network state dict in the documented key order."""
    values = (version, name, dict(static_kwargs), dict(components), build_module_src, build_func_name,
              [(n, v) for n, v in variables])
    return dict(zip(STATE_KEYS, values))


def write_networks(path: Path, make_states, *, numpy1_names: bool = True) -> Path:
    """Pickle the tuple of Networks that `make_states(Network)` returns (protocol 4)."""
    with fake_tf_modules() as Network:
        data = make_states(Network)
        with open(path, "wb") as f:
            if numpy1_names:
                _Numpy1Pickler(f, protocol=4).dump(data)
            else:
                pickle.dump(data, f, protocol=4)
    assert "dnnlib" not in sys.modules
    return path


# --------------------------------------------------------------------------- the shared fixture


def fixture_manifest(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / f"{TF_FIXTURE}.json").read_text(encoding="utf-8"))


def fixture_values(fixtures_dir: Path) -> dict[str, np.ndarray]:
    """The manifest's drawn tensors plus its constants, by manifest key."""
    manifest = fixture_manifest(fixtures_dir)
    values = dict(load_fixture_weights_module(fixtures_dir).state_dict_arrays(str(fixtures_dir / f"{TF_FIXTURE}.json")))
    for key, value in manifest["constants"].items():
        values[key] = np.asarray(value, dtype=np.float32)
    return values


def write_tf_fixture_pickle(path: Path, fixtures_dir: Path, build_module_src: str | None = None,
                            extra_static_kwargs: dict | None = None, build_func_name: dict | None = None,
                            variable_override: dict | None = None, numpy1_names: bool = True) -> Path:
    """The stylegan2_tf_32 fixture as the published files lay it out: `(G, D, Gs)`.

    `build_module_src`: the text every Network carries (default: the manifest's);
    `extra_static_kwargs`: {network key: dict merged into its static_kwargs} (e.g. {"Gs": {...}});
    `build_func_name`: {network key: name}; `variable_override`: {"Gs/synthesis:4x4/Conv/bias": value}.
    """
    manifest = fixture_manifest(fixtures_dir)
    values = fixture_values(fixtures_dir)
    src = manifest["build_module_src"] if build_module_src is None else build_module_src
    extra, funcs, override = extra_static_kwargs or {}, build_func_name or {}, variable_override or {}
    nets = manifest["networks"]

    def make(Network):
        made: dict[str, Any] = {}

        def build(key):
            if key not in made:
                spec = nets[key]
                comps = {ck: build(nk) for ck, nk in spec["components"].items()}
                variables = []
                for name, shape, value_key in spec["variables"]:
                    value = override.get(f"{key}:{name}", values[value_key])
                    variables.append((name, value if f"{key}:{name}" in override else tf_value(value, shape)))
                made[key] = Network(network_state(
                    spec["name"], funcs.get(key, spec["build_func_name"]),
                    {**spec["static_kwargs"], **extra.get(key, {})}, comps, variables, src))
            return made[key]

        return tuple(build(k) for k in manifest["top_level"])

    return write_networks(path, make, numpy1_names=numpy1_names)


# --------------------------------------------------------------------------- random pickles at other sizes


def tf_channels(resolution: int, fmap_base: int, fmap_max: int) -> dict[int, int]:
    """Feature maps per block resolution as networks_stylegan2.py's nf() gives them."""
    return {2**k: min(fmap_base // 2 ** (k - 1), fmap_max) for k in range(2, int(math.log2(resolution)) + 1)}


def random_tf_generator_variables(resolution, fmap_base, fmap_max, latent_size, dlatent_size, mapping_layers,
                                  num_channels=3, seed=0, lrmul=0.01) -> dict[str, list]:
    """Random variables of G_main / G_mapping / G_synthesis_stylegan2 in TensorFlow's layout and order."""
    rng = np.random.default_rng(seed)
    ch = tf_channels(resolution, fmap_base, fmap_max)

    def rnd(*shape, scale=1.0, base=0.0):
        return tf_value(base + scale * rng.standard_normal(shape), shape)

    mapping = []
    dims = [latent_size] + [dlatent_size] * mapping_layers
    for i in range(mapping_layers):
        mapping += [(f"Dense{i}/weight", rnd(dims[i], dims[i + 1], scale=1 / lrmul)),
                    (f"Dense{i}/bias", rnd(dims[i + 1], scale=0.1 / lrmul))]
    log = int(math.log2(resolution))
    synthesis = [(f"noise{k}", rnd(1, 1, 2 ** ((k + 5) // 2), 2 ** ((k + 5) // 2))) for k in range(2 * log - 3)]
    synthesis.append(("4x4/Const/const", rnd(1, ch[4], 4, 4)))

    def layer(base, cin, cout, k=3, noise=True):
        out = [(f"{base}/weight", rnd(k, k, cin, cout)), (f"{base}/mod_weight", rnd(dlatent_size, cin)),
               (f"{base}/mod_bias", rnd(cin, scale=0.1))]
        if noise:
            out.append((f"{base}/noise_strength", rnd(scale=0.1)))
        return out + [(f"{base}/bias", rnd(cout, scale=0.1))]

    for r in (2**k for k in range(2, log + 1)):
        if r == 4:
            synthesis += layer("4x4/Conv", ch[4], ch[4])
        else:
            synthesis += layer(f"{r}x{r}/Conv0_up", ch[r // 2], ch[r]) + layer(f"{r}x{r}/Conv1", ch[r], ch[r])
        synthesis += layer(f"{r}x{r}/ToRGB", ch[r], num_channels, k=1, noise=False)
    main = [("lod", tf_value(0.0, ())), ("dlatent_avg", rnd(dlatent_size, scale=0.5))]
    return {"main": main, "mapping": mapping, "synthesis": synthesis}


def write_random_tf_pickle(path: Path, resolution=64, fmap_base=128, fmap_max=32, latent_size=32, dlatent_size=32,
                           mapping_layers=2, seed=0, static_kwargs: dict | None = None, **kwargs) -> tuple[Path, dict]:
    """A random `(G, D, Gs)` TF StyleGAN2 pickle; returns (path, the Gs variables by component)."""
    variables = random_tf_generator_variables(resolution, fmap_base, fmap_max, latent_size, dlatent_size,
                                              mapping_layers, seed=seed)
    kw = dict(num_channels=3, resolution=resolution, label_size=0, fmap_base=fmap_base, fmap_max=fmap_max,
              latent_size=latent_size, dlatent_size=dlatent_size, mapping_fmaps=dlatent_size,
              mapping_layers=mapping_layers, **(static_kwargs or {}))
    n_latent = 2 * int(math.log2(resolution)) - 2

    def make(Network):
        def generator(name):
            mapping = Network(network_state(f"{name}_mapping" if name == "G" else "G_mapping", "G_mapping",
                                            {**kw, "dlatent_broadcast": n_latent}, {}, variables["mapping"]))
            synthesis = Network(network_state("G_synthesis", "G_synthesis_stylegan2", kw, {}, variables["synthesis"]))
            return Network(network_state(name, "G_main", kw, {"mapping": mapping, "synthesis": synthesis},
                                         variables["main"]))

        D = Network(network_state("D", "D_stylegan2", kw, {}, [("Output/bias", tf_value(np.zeros(1), (1,)))]))
        return generator("G"), D, generator("Gs")

    return write_networks(path, make, **kwargs), variables
