"""Sweeps, part 1: the grid. ``SweepConfig`` (read from YAML) and its expansion into cells.

A cell is one compress + diff: (model, method, level, calibration domain, seed). Its id is
a short sha256 of its JSON (which includes the diff settings), so the same cell in a
reworded or extended config keeps its id and its finished results.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensbias.errors import LensbiasError

INT_PARAMS = frozenset({"bits", "n_drop", "n_layers"})
"""Level parameters that take whole numbers."""
MORE_IS_LESS = frozenset({"bits", "rank_ratio", "n_layers"})
"""Level parameters where a *lower* level compresses harder (phase curves read them backwards)."""

TOP_KEYS = ("models", "methods", "calib", "seeds", "datasets", "max_chars", "max_examples",
            "sae", "concepts", "hooks", "n_bootstrap", "calib_n_seqs", "calib_seq_len",
            "control", "ceiling", "device", "threads")
METHOD_KEYS = ("name", "levels", "param", "calib", "targets")
TARGET_GROUPS = ("attn", "mlp", "embed", "unembed")


@dataclass(frozen=True)
class MethodSpec:
    """One compression method of the grid and the levels it is swept over."""

    name: str
    levels: tuple[float | int, ...]
    param: str
    """The recipe parameter each level sets (e.g. ``sparsity``, ``bits``)."""
    params: tuple[tuple[str, Any], ...] = ()
    """Extra recipe parameters, the same for every level (sorted key/value pairs)."""
    calib: tuple[str, ...] | None = None
    """This method's calibration domains (None: the sweep's). One is enough for a
    data-free method such as magnitude, whose result does not depend on it."""
    targets: tuple[str, ...] | None = None
    """Module groups compressed (attn, mlp, embed, unembed); None: attn and mlp."""

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "levels": list(self.levels), "param": self.param,
             **dict(self.params)}
        if self.calib is not None:
            d["calib"] = list(self.calib)
        if self.targets is not None:
            d["targets"] = list(self.targets)
        return d


@dataclass(frozen=True)
class SweepConfig:
    """A grid of compress + diff runs (``lensbias sweep CONFIG``)."""

    models: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    calib: tuple[str, ...] = ("code", "prose")
    """Calibration domains (``CalibConfig.domain``)."""
    seeds: tuple[int, ...] = (0,)
    """Each seeds the calibration windows and the diff (probes, geometry, bootstrap)."""
    datasets: tuple[str, ...] = ("ud-ewt", "python-stdlib")
    max_chars: int | None = 60_000
    max_examples: int | None = None
    sae: bool = False
    """SAE feature survival per cell (slow; off for sweeps unless asked)."""
    concepts: tuple[str, ...] | None = None
    hooks: tuple[str, ...] | None = None
    n_bootstrap: int = 200
    calib_n_seqs: int | None = None
    """Calibration sequences (None: CalibConfig's default)."""
    calib_seq_len: int | None = None
    """Tokens per calibration sequence (None: CalibConfig's default)."""
    control: bool = True
    """Control-task probes (selectivity) in each cell's diff."""
    ceiling: bool = True
    """Half-split probes (direction-cosine ceiling) in each cell's diff."""
    device: str = "cpu"
    """Torch device for each cell's models (``cuda`` on GPU workers); not part of cell ids."""
    threads: int | None = None
    """torch intra-op threads per cell (None: cores // jobs in a pool, cpus_per_cell on Ray,
    else the CLI default: 1 on machines with <= 2 cores); not part of cell ids."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def quick(self) -> SweepConfig:
        """The CI version: the first model, the first seed, each method's first level, on a
        small slice (at most 6,000 characters per dataset, 16 calibration sequences and 50
        bootstrap resamples)."""
        return dataclasses.replace(
            self, models=self.models[:1], seeds=self.seeds[:1],
            methods=tuple(dataclasses.replace(m, levels=m.levels[:1]) for m in self.methods),
            max_chars=min(self.max_chars or QUICK_CHARS, QUICK_CHARS),
            n_bootstrap=min(self.n_bootstrap, QUICK_BOOTSTRAP),
            calib_n_seqs=min(self.calib_n_seqs or QUICK_CALIB_SEQS, QUICK_CALIB_SEQS))


QUICK_CHARS, QUICK_BOOTSTRAP, QUICK_CALIB_SEQS = 6000, 50, 16


@dataclass(frozen=True)
class Cell:
    """One compress + diff of the grid."""

    index: int
    """Position in the grid's fixed order (model, method, level, calib, seed)."""
    model: str
    method: str
    param: str
    level: float | int
    calib: str
    seed: int
    params: tuple[tuple[str, Any], ...] = ()
    diff: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """The sweep-wide diff/calibration settings, part of the id."""
    targets: tuple[str, ...] | None = None
    """Module groups compressed; None: the default (attn and mlp)."""

    def spec(self) -> dict[str, Any]:
        """Everything that decides this cell's results (hashed into its id)."""
        spec = {"model": self.model, "method": self.method, "param": self.param,
                "level": self.level, "params": dict(self.params), "calib": self.calib,
                "seed": self.seed, "diff": dict(self.diff)}
        if self.targets is not None:  # only when set, so older cells keep their ids
            spec["targets"] = list(self.targets)
        return spec

    @property
    def id(self) -> str:
        blob = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def recipe_params(self) -> dict[str, Any]:
        return {**dict(self.params), self.param: self.level}


def cells(config: SweepConfig) -> list[Cell]:
    """The grid in a fixed order: model, then method, level, calibration domain, seed."""
    diff = (("calib_n_seqs", config.calib_n_seqs), ("calib_seq_len", config.calib_seq_len),
            ("concepts", list(config.concepts) if config.concepts is not None else None),
            ("datasets", list(config.datasets)),
            ("hooks", list(config.hooks) if config.hooks is not None else None),
            ("max_chars", config.max_chars), ("max_examples", config.max_examples),
            ("n_bootstrap", config.n_bootstrap), ("sae", config.sae))
    # only when not the default, so cells keep the ids they had before these options existed
    diff += tuple((k, v) for k, v in (("control", config.control),
                                      ("ceiling", config.ceiling)) if not v)
    out: list[Cell] = []
    for model in config.models:
        for m in config.methods:
            for level in m.levels:
                for calib in m.calib or config.calib:
                    for seed in config.seeds:
                        out.append(Cell(len(out), model, m.name, m.param, level, calib, seed,
                                        m.params, diff, m.targets))
    return out


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file; any problem is one LensbiasError naming the field."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LensbiasError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise LensbiasError(f"{path} is a folder, not a sweep YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise LensbiasError(f"{path}{where}: not valid YAML "
                            f"({getattr(err, 'problem', None) or err})") from None
    return sweep_config_from_dict(raw, str(path))


def sweep_config_from_dict(raw: Any, source: str = "sweep config") -> SweepConfig:
    """Validate a parsed sweep config (the YAML's top-level mapping)."""
    from lensbias.compress import METHODS
    from lensbias.compress.base import make_method, method_params
    from lensbias.model_pair import LEVEL_PARAM

    def fail(where: str, what: str) -> LensbiasError:
        return LensbiasError(f"{source}: {where}: {what}")

    if not isinstance(raw, dict):
        raise LensbiasError(f"{source}: expected a mapping of fields ({', '.join(TOP_KEYS)}), "
                            f"got {type(raw).__name__}")
    _unknown(raw, TOP_KEYS, source, "")
    for key in ("models", "methods"):
        if key not in raw:
            raise fail(key, "missing (required)")

    models = _str_list(raw, "models", fail)
    calib = _str_list(raw, "calib", fail, default=("code", "prose"))
    _check_corpora(calib, "calib", fail)
    datasets = _str_list(raw, "datasets", fail, default=("ud-ewt", "python-stdlib"))
    concepts = _str_list(raw, "concepts", fail, default=None)
    hooks = _str_list(raw, "hooks", fail, default=None)
    seeds = _list(raw, "seeds", fail, default=(0,))
    for i, s in enumerate(seeds):
        if not _is_int(s):
            raise fail(f"seeds[{i}]", f"must be a whole number, got {s!r}")

    methods_raw = _list(raw, "methods", fail)
    methods = []
    for i, m in enumerate(methods_raw):
        where = f"methods[{i}]"
        if isinstance(m, str):
            raise fail(where, f"must be a mapping like {{name: {m}, levels: [...]}}")
        if not isinstance(m, dict):
            raise fail(where, f"must be a mapping with name and levels, got {type(m).__name__}")
        if "name" not in m:
            raise fail(f"{where}.name", "missing (required)")
        name = m["name"]
        if not isinstance(name, str):
            raise fail(f"{where}.name", f"must be a string, got {type(name).__name__}")
        if name not in METHODS:
            near = difflib.get_close_matches(name, list(METHODS), n=2)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise fail(f"{where}.name", f"unknown compression method {name!r}{hint}; choose "
                                        f"from {', '.join(sorted(METHODS))}")
        where = f"methods[{i}] ({name})"
        accepted = method_params(name)
        param = m.get("param", LEVEL_PARAM.get(name, "sparsity"))
        if not isinstance(param, str):
            raise fail(f"{where}.param", f"must be a string, got {type(param).__name__}")
        if param not in accepted:
            raise fail(f"{where}.param", f"{name} does not take {param!r}; it takes "
                                         f"{', '.join(accepted) or 'no options'}")
        extra = {k: v for k, v in m.items() if k not in METHOD_KEYS}
        m_calib = _str_list(m, "calib", lambda k, w, at=where: fail(f"{at}.{k}", w),
                            default=None)
        if m_calib is not None and len(set(m_calib)) != len(m_calib):
            raise fail(f"{where}.calib", "has duplicates")
        _check_corpora(m_calib or (), f"{where}.calib", fail)
        targets = _str_list(m, "targets", lambda k, w, at=where: fail(f"{at}.{k}", w),
                            default=None)
        if targets is not None:
            bad_t = [t for t in targets if t not in TARGET_GROUPS]
            if bad_t or len(set(targets)) != len(targets):
                raise fail(f"{where}.targets", f"use distinct groups from "
                                               f"{', '.join(TARGET_GROUPS)}; got {targets}")
            targets = tuple(t for t in TARGET_GROUPS if t in targets)
        bad = sorted(k for k in extra if k not in accepted)
        if bad:
            raise fail(f"{where}.{bad[0]}", f"unknown field; a method takes name, levels, "
                                            f"param and {name}'s options: "
                                            f"{', '.join(accepted) or 'none'}")
        if param in extra:
            raise fail(f"{where}.{param}", "is set by levels; remove it")
        if "levels" not in m:
            raise fail(f"{where}.levels", "missing (required)")
        levels = m["levels"]
        if not isinstance(levels, list):
            raise fail(f"{where}.levels", f"must be a list, got {type(levels).__name__}")
        if not levels:
            raise fail(f"{where}.levels", "is empty")
        norm: list[float | int] = []
        for j, level in enumerate(levels):
            if isinstance(level, bool) or not isinstance(level, (int, float)):
                raise fail(f"{where}.levels[{j}]", f"must be a number, got {level!r}")
            if param in INT_PARAMS:
                if not _is_int(level) and level != int(level):
                    raise fail(f"{where}.levels[{j}]", f"{param} must be a whole number, "
                                                       f"got {level!r}")
                norm.append(int(level))
            else:
                norm.append(float(level))
        if len(set(norm)) != len(norm):
            raise fail(f"{where}.levels", "has duplicates")
        for j, level in enumerate(norm):  # the method's own checks, per level
            try:
                make_method(name, {**extra, param: level})
            except LensbiasError as err:
                raise fail(f"{where}.levels[{j}]", str(err)) from None
            except (TypeError, ValueError) as err:
                raise fail(where, f"bad options ({err})") from None
        methods.append(MethodSpec(name, tuple(norm), param,
                                  tuple(sorted((k, _freeze(v)) for k, v in extra.items())),
                                  tuple(m_calib) if m_calib is not None else None, targets))
    names = [(m.name, m.param, m.params, m.targets) for m in methods]
    if len(set(names)) != len(names):
        raise fail("methods", "lists the same method (with the same options) twice; merge "
                              "their levels")

    max_chars = _opt_int(raw, "max_chars", fail, 60_000, minimum=100)
    max_examples = _opt_int(raw, "max_examples", fail, None, minimum=1)
    n_bootstrap = _opt_int(raw, "n_bootstrap", fail, 200, minimum=1, allow_none=False)
    n_seqs = _opt_int(raw, "calib_n_seqs", fail, None, minimum=1)
    seq_len = _opt_int(raw, "calib_seq_len", fail, None, minimum=2)
    flags = {}
    for key, default in (("sae", False), ("control", True), ("ceiling", True)):
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            raise fail(key, f"must be true or false, got {flags[key]!r}")
    for key, values in (("models", models), ("calib", calib), ("seeds", seeds),
                        ("datasets", datasets)):
        if len(set(values)) != len(values):
            raise fail(key, "has duplicates")
    device = raw.get("device", "cpu")
    if not isinstance(device, str) or not device:
        raise fail("device", f"must be a torch device name such as cpu or cuda, got {device!r}")
    threads = _opt_int(raw, "threads", fail, None, minimum=1)
    return SweepConfig(models=tuple(models), methods=tuple(methods), calib=tuple(calib),
                       device=device, threads=threads,
                       seeds=tuple(int(s) for s in seeds), datasets=tuple(datasets),
                       max_chars=max_chars, max_examples=max_examples, **flags,
                       concepts=tuple(concepts) if concepts is not None else None,
                       hooks=tuple(hooks) if hooks is not None else None,
                       n_bootstrap=n_bootstrap, calib_n_seqs=n_seqs, calib_seq_len=seq_len)


def _unknown(raw: dict, known: tuple[str, ...], source: str, prefix: str) -> None:
    for key in raw:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise LensbiasError(f"{source}: {prefix}{key}: unknown field{hint}; known: "
                                f"{', '.join(known)}")


def _check_corpora(calib: Any, key: str, fail: Any) -> None:
    """A ``corpus:NAME`` calibration with an unknown NAME fails at load time (other values
    pass through: built-in domains and files are checked when a cell runs)."""
    from lensbias.compress.calib import corpus_name

    for i, value in enumerate(calib):
        try:
            corpus_name(value)
        except LensbiasError as err:
            raise fail(f"{key}[{i}]", str(err)) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _list(raw: dict, key: str, fail: Any, default: Any = ...) -> Any:
    if key not in raw or (raw[key] is None and default is not ...):
        return default
    value = raw[key]
    if not isinstance(value, list):
        raise fail(key, f"must be a list, got {type(value).__name__}")
    if not value:
        raise fail(key, "is empty")
    return value


def _str_list(raw: dict, key: str, fail: Any, default: Any = ...) -> Any:
    value = _list(raw, key, fail, default)
    if value is default:
        return value
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise fail(f"{key}[{i}]", f"must be a non-empty string, got {v!r}")
    return value


def _opt_int(raw: dict, key: str, fail: Any, default: int | None, minimum: int,
             allow_none: bool = True) -> int | None:
    if key not in raw:
        return default
    value = raw[key]
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise fail(key, f"must be a whole number{' or null' if allow_none else ''}, "
                        f"got {value!r}")
    if value < minimum:
        raise fail(key, f"must be at least {minimum}, got {value}")
    return value


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v
