"""Survival, stage 3: ``run_diff``: from a model pair to a ``SurvivalResult`` and a report.

Stages: (compress) → cache A and B → probes → SAE → geometry → behaviour → report; where a
core is spare, SAE, geometry and behaviour run in a second thread beside the probes
(``DiffConfig.overlap``, ``lensbias.threads``). Caches and fitted artefacts live in the
output folder, keyed by fingerprints, so a rerun with the same inputs reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensbias import __version__
from lensbias.compress import Recipe
from lensbias.errors import LensbiasError
from lensbias.concepts.jsonl import USER_DOMAIN
from lensbias.model_pair import (cache_pair, check_recipe, check_same_tokenizer, check_writable,
                           compress_on_the_fly, merged_dataset, resolve_model)
from lensbias.store import CacheConfig
from lensbias.survival import SCHEMA, SurvivalResult
from lensbias.threads import Cancelled, Overlapped, spare_core

MARKER = ".lensbias-report"


@dataclass(frozen=True)
class DiffConfig:
    """What ``lensbias diff`` measures."""

    datasets: tuple[str, ...] = ("ud-ewt", "python-stdlib")
    """Concept datasets, merged into one (prose and code tokens side by side)."""
    max_examples: int | None = None
    """Examples taken from each dataset at most (None: no limit)."""
    max_chars: int | None = 60_000
    """Characters of text taken from each dataset, in whole examples (None: no limit)."""
    concepts: tuple[str, ...] | None = None
    """Concepts to probe (None: every token-level label set)."""
    hooks: tuple[str, ...] | None = None
    """Hooks to cache and compare (None: residual stream after every block); the embedding
    stream ``blocks.0.hook_resid_pre`` is always cached too, for the ``embed`` floor."""
    sae: bool = True
    """Train an SAE on A and measure feature survival."""
    sae_hook: str | None = None
    """Hook for the SAE (None: the middle block's residual stream)."""
    sae_expansion: int = 8
    """SAE width as a multiple of d_model."""
    sae_k: int = 16
    """TopK SAE's active features per token."""
    sae_tokens: int = 100_000
    """Training tokens for each of the three SAEs (A, A with seed + 1 for stability, B for
    the information reading; the store's training documents are cycled)."""
    seed: int = 0
    """Seeds probes, SAE, geometry sampling and bootstrap."""
    n_bootstrap: int = 200
    """Bootstrap resamples for confidence intervals."""
    probe_control: bool = True
    """Control-task probes for selectivity (``ProbeConfig.control``)."""
    probe_ceiling: bool = True
    """Half-split probes for the direction-cosine ceiling (``ProbeConfig.ceiling``)."""
    probe_batch_bytes: int = 2**30
    """Activation bytes the probes read per group of concepts at a hook
    (``ProbeConfig.batch_bytes``): the probe stage's memory follows it."""
    overlap: bool | None = None
    """Run the stages after the probes (SAE, geometry, behaviour) in a second thread while
    the probes run (None: when a second stage at torch's intra-op thread count fits on the
    cores, ``threads.spare_core``; on 2 cores with the CLI's 1 thread, yes). Results are the
    same either way; a sweep that runs cells side by side turns it off."""
    device: str = "cpu"
    """Torch device for the models (compression, caching, behaviour), the probes, their
    alignment maps and bootstrap replicates (``ProbeConfig.device``), the SAEs
    (``SAEConfig.device``) and their alignment map, and geometry (``GeometryConfig.device``:
    moments, spectra, CKA, anisotropy, Compression Hacking spectra); the cached activations
    are read on the host and moved there batch by batch."""


def check_out(out: Path, force: bool) -> None:
    """Refuse, before any work, an ``out`` that cannot become a report folder: a file, a
    folder lensbias did not make (unless ``force``), a missing or unwritable parent."""
    if out.exists() and not out.is_dir():
        raise LensbiasError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise LensbiasError(f"{out} exists and is not a lensbias report folder; pass --force "
                            "to write into it or choose another --out")
    check_writable(out if out.is_dir() else out.parent)


def prepare_out(out: Path, force: bool) -> Callable[[], None]:
    """Check ``out`` (``check_out``) and make it a report folder (marker file). Returns an
    undo for a run that fails or is interrupted: it removes the empty folders this run made
    and, when nothing else is left, the marker and the folder, so no empty report shell
    stays behind. Finished work (a compressed model, caches, artefacts) is kept for reuse."""
    check_out(out, force)
    created = not out.exists()
    before = set() if created else {p.name for p in out.iterdir()}
    marked = MARKER not in before

    def undo() -> None:
        if not out.is_dir():
            return
        for entry in list(out.iterdir()):
            if entry.name not in before and entry.is_dir() and not entry.is_symlink():
                for root, dirs, files in os.walk(entry, topdown=False):
                    if not files and not any((Path(root) / d).exists() for d in dirs):
                        try:
                            os.rmdir(root)
                        except OSError:
                            pass
        left = {p.name for p in out.iterdir()}
        if marked and left - before == {MARKER}:
            (out / MARKER).unlink(missing_ok=True)
            if created:
                try:
                    out.rmdir()
                except OSError:
                    pass

    try:
        out.mkdir(exist_ok=True)
        (out / MARKER).write_text(SCHEMA + "\n")
    except OSError as err:
        undo()
        raise LensbiasError(f"cannot write in {out}: {err.strerror or err}") from None
    return undo


def run_diff(model_a: str, model_b: str | None, recipe: Recipe | None, config: DiffConfig,
             out: Path, force: bool = False,
             stage: Callable[[str], None] = lambda name: None, progress: bool = False,
             domain: str = USER_DOMAIN) -> SurvivalResult:
    """Compare ``model_a`` with ``model_b`` (or with ``model_a`` compressed by ``recipe``).

    Everything checkable is checked before ``out`` is made: the recipe and calibration
    domain, the datasets (``domain``: the domain of user-file examples that declare none),
    the output folder, both models and their tokenizers. A run that fails or is
    interrupted after that leaves no empty report folder (``prepare_out``).
    """
    out = Path(out)
    started = time.perf_counter()
    if model_b is None:
        if recipe is None:
            raise LensbiasError("give a compressed model or a recipe to compress model_a by")
        check_recipe(recipe)
    data = merged_dataset(list(config.datasets), config.max_examples, config.max_chars, domain)
    check_out(out, force)
    a = resolve_model(model_a, config.device)
    b = None if model_b is None else resolve_model(model_b, config.device)
    if b is not None:
        check_same_tokenizer(a, b, data.examples[0].text)
    undo = prepare_out(out, force)
    try:
        return _run_diff(a, b, recipe, data, config, out, stage, progress, started)
    except BaseException:
        undo()
        raise


def _run_diff(a: Any, b: Any, recipe: Recipe | None, data: Any, config: DiffConfig, out: Path,
              stage: Callable[[str], None], progress: bool, started: float) -> SurvivalResult:
    timings: dict[str, float] = {}
    clock = started

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    compressed = None
    if b is None:
        stage("compress")
        compressed = compress_on_the_fly(a, recipe, out / "model-b")
        b = compressed.lm
        check_same_tokenizer(a, b, data.examples[0].text)
    tick("load+compress")

    stage("cache")
    cache_cfg = CacheConfig(hooks=_cache_hooks(a, config), dtype="float16",
                            device=config.device)
    path_a, path_b = cache_pair(a, b, data, out / "cache", cache_cfg, progress=progress)
    tick("cache")

    from lensbias.store import ActivationStore

    with ActivationStore(path_a) as store_a, ActivationStore(path_b) as store_b:
        key = _key(store_a.fingerprint, store_b.fingerprint, config)
        sae_hook = None
        if config.sae:
            probed = [h for h in store_a.hooks if h != "blocks.0.hook_resid_pre"] \
                or store_a.hooks
            sae_hook = config.sae_hook or probed[len(probed) // 2]

        def rest(cancel: threading.Event | None, stage: Callable[[str], None]) -> _Rest:
            """The stages after the probes: SAE, geometry, behaviour (each timed)."""
            done = _Rest()

            def run(name: str, artefact: str, compute: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{name} not started")
                stage(name)
                begin = time.perf_counter()
                result = _cached(out, artefact, key, compute)
                done.seconds[name] = round(time.perf_counter() - begin, 2)
                return result

            if sae_hook is not None:
                done.saes[sae_hook] = run("sae", f"sae-{sae_hook}", lambda: _sae(
                    store_a, store_b, sae_hook, config, out, cancel))
            done.geometry = run("geometry", "geometry",
                                lambda: _geometry(store_a, store_b, config))
            if a.is_encoder == b.is_encoder:  # causal: losses, bits/byte; encoders: embeddings
                done.behaviour = run("behaviour", "behaviour",
                                     lambda: _behaviour(a, b, data, store_a, config))
            return done

        overlap = config.overlap if config.overlap is not None else spare_core()
        background = Overlapped(lambda cancel: rest(cancel, lambda name: None),
                                "stages") if overlap else None
        try:
            stage("probes")
            probes = _cached(out, "probes", key, lambda: _probes(store_a, store_b, config))
            tick("probes")
            if background is None:
                after = rest(None, stage)
                timings.update(after.seconds)
            else:
                background.check()  # a stage that failed already fails the run now
                stage("sae" if sae_hook is not None else "geometry")
                after = background.result()
                timings.update(after.seconds)  # their own times, beside the probes
                tick("wait")  # what they added after the probes had finished
        except BaseException:
            if background is not None:
                background.stop()  # before the caller's undo: no artefact half-written
            raise
        saes, geometry, behaviour = after.saes, after.geometry, after.behaviour
        provenance = _provenance(a, b, compressed, data, config, store_a, timings)
    result = SurvivalResult(provenance, probes, geometry, behaviour, saes)
    stage("report")
    write_report(result, out)
    return result


@dataclass
class _Rest:
    """What the stages after the probes produced, and their own times in seconds."""

    saes: dict[str, Any] = dataclasses.field(default_factory=dict)
    geometry: dict[str, Any] | None = None
    behaviour: dict[str, Any] | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def write_report(result: SurvivalResult, out: Path) -> None:
    """summary.json and report.html, each written atomically."""
    result.save(out / "summary.json")
    tmp = out / ".report.html.tmp"
    tmp.write_text(result.html(), encoding="utf-8")
    os.replace(tmp, out / "report.html")


def _key(fp_a: dict, fp_b: dict, config: DiffConfig) -> str:
    settings = dataclasses.asdict(config)
    settings.pop("overlap")  # how the stages are scheduled, not what they compute
    blob = json.dumps([fp_a, fp_b, settings, __version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cached(out: Path, name: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A stage's result from ``artefacts/NAME.json`` when its key matches, else computed."""
    folder = out / "artefacts"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and saved.get("key") == key \
                    and isinstance(saved.get("result"), dict):
                return saved["result"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # unreadable or hand-edited: recompute and overwrite
    result = compute()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, allow_nan=False))
    os.replace(tmp, path)
    return result


def _cache_hooks(a: Any, config: DiffConfig) -> tuple[str, ...]:
    """The hooks to cache: those asked for (default: every block's residual stream) plus
    the context-free embedding stream the probes' ``embed`` floor reads."""
    from lensbias.models import adapter
    from lensbias.probes.floors import EMBED_HOOK

    hooks = tuple(config.hooks or adapter.default_hooks(a.model))
    return hooks if EMBED_HOOK in hooks else (*hooks, EMBED_HOOK)


def _probes(store_a: Any, store_b: Any, config: DiffConfig) -> dict[str, Any]:
    from lensbias.probes.pair import ProbeConfig, ProbePair

    cfg = ProbeConfig(concepts=config.concepts, seed=config.seed, n_bootstrap=config.n_bootstrap,
                      control=config.probe_control, ceiling=config.probe_ceiling,
                      batch_bytes=config.probe_batch_bytes, device=config.device)
    return ProbePair(cfg).fit(store_a, store_b).to_dict()


def _sae(store_a: Any, store_b: Any, hook: str, config: DiffConfig, out: Path,
         cancel: threading.Event | None = None) -> dict[str, Any]:
    """Survival v2 (docs/survival.md): A's SAE, a second seed on A (stability, the null), an
    SAE on B (information), the label-free map of B onto A (aligned readout), all on the
    same held-out documents; each SAE is saved under ``artefacts/sae-HOOK/{a,a-seed2,b}``."""
    from dataclasses import replace

    from lensbias.saes import (FeatureSurvival, SAEConfig, fit_alignment, heldout_rows,
                               read_info, train_sae)

    cfg = SAEConfig(expansion_factor=config.sae_expansion, k=config.sae_k,
                    training_tokens=config.sae_tokens, seed=config.seed, lr=3e-3,
                    batch_size=min(1024, max(256, store_a.n_tokens // 8)),
                    device=config.device)
    folder = out / "artefacts" / f"sae-{hook}"
    shutil.rmtree(folder, ignore_errors=True)
    sae = train_sae(store_a, hook, cfg, out_dir=folder / "a", cancel=cancel)
    sae2 = train_sae(store_a, hook, replace(cfg, seed=cfg.seed + 1), out_dir=folder / "a-seed2",
                     cancel=cancel)
    sae_b = train_sae(store_b, hook, cfg, out_dir=folder / "b", cancel=cancel)
    held, _ = heldout_rows(store_a, cfg.holdout_fraction, cfg.split_seed)
    align, align_info = fit_alignment(store_a, store_b, hook, ~held, seed=config.seed,
                                      device=config.device)
    info = read_info(folder / "a")  # training times stay in lensbias.json: the summary is
    info["training"] = {k: v for k, v in info.get("training", {}).items()  # deterministic
                        if k not in ("seconds", "tokens_per_second")}
    report = FeatureSurvival(sae).compare(store_a, store_b, hook, sae_b=sae_b, sae_config=info,
                                          sae_a2=sae2, align=align, heldout=held,
                                          align_info=align_info)
    return report.to_dict()


def _geometry(store_a: Any, store_b: Any, config: DiffConfig) -> dict[str, Any]:
    from lensbias.geometry.compare import GeometryConfig, compare_geometry

    from lensbias.probes.floors import EMBED_HOOK

    hooks = config.hooks or tuple(h for h in store_a.hooks if h != EMBED_HOOK)
    return compare_geometry(store_a, store_b, GeometryConfig(seed=config.seed, hooks=hooks,
                                                             device=config.device)).to_dict()


def _behaviour(a: Any, b: Any, data: Any, store_a: Any, config: DiffConfig) -> dict[str, Any]:
    if a.is_encoder:  # no LM head: behaviour is embedding fidelity on held-out code and prose
        from lensbias.behaviour.embedding import compare_embeddings

        return compare_embeddings(a, b).to_dict()
    from lensbias.behaviour.loss import compare_behaviour

    return compare_behaviour(a, b, data, store_a, seed=config.seed).to_dict()


def _provenance(a: Any, b: Any, compressed: Any, data: Any, config: DiffConfig, store_a: Any,
                timings: dict[str, float]) -> dict[str, Any]:
    recipe = compressed.recipe.to_dict() if compressed is not None else None
    if recipe is None and b.source == "folder" and (Path(b.name) / "recipe.json").exists():
        from lensbias.compress.save import read_recipe

        recipe = read_recipe(b.name).get("recipe")
    if recipe is None and getattr(b, "recipe", None) is not None:
        recipe = b.recipe  # a transformers checkpoint's quantization/sparsity config
    return {"model_a": {"name": a.name, "weights_sha256": a.weights_hash(), "source": a.source},
            "model_b": {"name": b.name, "weights_sha256": b.weights_hash(), "source": b.source},
            "recipe": recipe, "dataset": data.name, "n_examples": len(data.examples),
            "n_tokens": store_a.n_tokens, "hooks": store_a.hooks,
            "config": dataclasses.asdict(config), "seed": config.seed,
            "lensbias_version": __version__, "timings_seconds": timings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
