"""Train the built-in tiny models (tiny-mixed, tiny-code, tiny-prose) from real data.

Developer tool: reads GUM train documents from ../shared/data and the running
interpreter's standard library (minus the fixed held-out files), trains one shared
byte-level BPE tokenizer and three 4-layer HookedTransformers, and writes their folders
under src/lensbias/models/weights/. About 10 minutes per model on 2 CPU cores.

    python scripts/train_tiny.py [--data ../shared/data] [--steps 1200] [--only tiny-mixed]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from lensbias.concepts.conllu import read_paragraphs
from lensbias.concepts.stdlib import is_held_out, stdlib_files
from lensbias.models.adapter import build_decoder
from lensbias.models.folder import save_folder
from lensbias.models.tiny import TINY_MIXTURES, WEIGHTS_DIR, tiny_config
from lensbias.models.tokenizer import BPETokenizer
from lensbias.compress.measure import HELD_OUT_SLICE, held_out_texts
from lensbias.models.train import TrainConfig, bits_per_byte, train_lm

VOCAB = 4096
CODE_TRAIN_CHARS = 6_000_000
EVAL_CHARS = 150_000


def gum_documents(data: Path, split: str) -> list[str]:
    """Plain text of GUM documents of one official split: paragraphs separated by a blank line."""
    root = data / "ud-english-gum"
    paths = [root / "sources" / f"{name}.conllu" for name in (root / f"files.{split}").read_text().split()]
    # GUM's reddit documents are listed but not distributed
    return ["\n\n".join(read_paragraphs(p)) for p in paths if p.exists()]


def code_documents(held_out: bool, max_chars: int) -> list[str]:
    """Stdlib files on one side of the held-out rule, in hash order, up to ``max_chars``."""
    files = [(hashlib.sha256(rel.encode()).hexdigest(), rel, p) for rel, p in stdlib_files()
             if is_held_out(rel) == held_out]
    docs, total = [], 0
    for _, _, path in sorted(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return docs


def cut(docs: list[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for d in docs:
        out.append(d[: max_chars - total])
        total += len(out[-1])
        if total >= max_chars:
            break
    return out


def stream(tok: BPETokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one token stream, documents separated by BOS."""
    parts = []
    for ids in tok.encode_batch_ids(docs):
        parts.extend([tok.bos_id, *ids])
    return np.asarray(parts, dtype=np.int32)


def card(name: str, cfg: TrainConfig, n_params: int, final_loss: float, bpb: dict[str, float],
         corpus: dict[str, int], seconds: float, mixture: dict[str, float],
         bpb_default: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in bpb.items())
    return f"""# {name}

A tiny causal TransformerLens HookedTransformer trained by `scripts/train_tiny.py`
(lensbias' own script) on real data. Built in so that lensbias runs offline.

- Shape: 4 layers, d_model 256, 4 heads of 64, d_mlp 1024, GELU, LayerNorm, learned
  positions, n_ctx 256; {n_params:,} parameters; byte-level BPE, {VOCAB} tokens
  (one tokenizer shared by tiny-mixed, tiny-code and tiny-prose).
- Training mixture (share of sequences): code {mixture['code']:.0%}, prose {mixture['prose']:.0%}.
- Code: the Python {'.'.join(map(str, __import__('sys').version_info[:2]))} standard library, files
  that are not held out (`lensbias.concepts.stdlib.is_held_out`), {corpus['code_tokens']:,} tokens.
- Prose: the GUM treebank's official train documents (CC BY-NC-SA 4.0), {corpus['prose_tokens']:,} tokens.
  EWT and GUM dev/test are never trained on.
- Steps: {cfg.steps} × {cfg.batch_size} sequences × {cfg.seq_len} tokens, AdamW lr {cfg.lr},
  warm-up {cfg.warmup}, cosine to 10%, seed {cfg.seed}; {seconds/60:.1f} min on 2 CPU cores.
- Final training loss (mean of the last 50 steps): {final_loss:.3f} nats/token.

Bits per byte on held-out text (lower is better), slice `train-eval-150k` (measured by
`scripts/train_tiny.py` after training):

| held-out text | bits per byte |
| --- | --- |
{rows}

Slice `train-eval-150k`: held-out code is the first {EVAL_CHARS:,} characters of held-out stdlib
files, held-out prose the first {EVAL_CHARS:,} characters of GUM dev documents.

On lensbias' default slice `{HELD_OUT_SLICE}` (what `lensbias compress`, `diff` and `sweep`
report: the first 40 chunks of the packaged `python-stdlib` dataset and the first 400
`ud-gum:dev` sentences in passages of 20; `lensbias.compress.measure.model_bits_per_byte`):

| held-out text | bits per byte |
| --- | --- |
| code (`python-stdlib`, 40 chunks) | {bpb_default['code']:.3f} |
| prose (`ud-gum:dev`, 400 sentences) | {bpb_default['prose']:.3f} |

The two slices differ enough to change which domain looks easier for tiny-mixed; compare
figures only within one slice.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--only", action="append", choices=list(TINY_MIXTURES))
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args()
    torch.set_num_threads(2)

    prose_train = gum_documents(args.data, "train")
    code_train = code_documents(held_out=False, max_chars=CODE_TRAIN_CHARS)
    prose_eval = cut(gum_documents(args.data, "dev"), EVAL_CHARS)
    code_eval = cut(code_documents(held_out=True, max_chars=EVAL_CHARS), EVAL_CHARS)
    prose_chars = sum(map(len, prose_train))
    balanced_code = cut(code_train, prose_chars)
    print(f"prose train {prose_chars:,} chars, code train {sum(map(len, code_train)):,} chars")

    tok = BPETokenizer.train(prose_train + balanced_code, VOCAB)
    streams = {"code": stream(tok, code_train), "prose": stream(tok, prose_train)}
    corpus = {f"{k}_tokens": len(v) for k, v in streams.items()}
    print(corpus)
    for name in args.only or list(TINY_MIXTURES):
        mix = TINY_MIXTURES[name]
        cfg = TrainConfig(steps=args.steps, seed=0)
        torch.manual_seed(cfg.seed)
        tl_config = tiny_config(VOCAB, seed=cfg.seed)
        model = build_decoder(tl_config)
        start = time.perf_counter()

        def log(step: int, loss: float, secs: float) -> None:
            if step % 100 == 0 or step == cfg.steps - 1:
                print(f"{name} step {step} loss {loss:.3f} {secs:.0f}s", flush=True)

        losses = train_lm(model, [streams["code"], streams["prose"]],
                          [mix["code"], mix["prose"]], cfg, tok.bos_id, log)
        seconds = time.perf_counter() - start
        enc = lambda t: tok.encode(t).ids[1:]  # noqa: E731 (drop BOS)
        bpb = {"code (held-out stdlib)": bits_per_byte(model, code_eval, enc, tok.bos_id, 256),
               "prose (GUM dev)": bits_per_byte(model, prose_eval, enc, tok.bos_id, 256)}
        # lensbias' default slice, as measure.model_bits_per_byte computes it
        bpb_default = {d: bits_per_byte(model, held_out_texts(d), enc, tok.bos_id, 256)
                       for d in ("code", "prose")}
        counts = (torch.bincount(torch.from_numpy(streams["code"]).long(), minlength=VOCAB) * mix["code"]
                  + torch.bincount(torch.from_numpy(streams["prose"]).long(), minlength=VOCAB) * mix["prose"])
        final = float(np.mean(losses[-50:]))
        n_params = sum(p.numel() for p in model.parameters())
        meta = {"name": name, "mixture": mix, "train": json.loads(json.dumps(cfg.__dict__)),
                "final_loss": final, "bits_per_byte": bpb, "corpus": corpus,
                "train_seconds": round(seconds, 1)}
        save_folder(args.out / name, model, tok, meta, counts.round().numpy(),
                    {"MODEL_CARD.md": card(name, cfg, n_params, final, bpb, corpus, seconds, mix,
                                           bpb_default)},
                    force=True)
        print(name, json.dumps(bpb), flush=True)


if __name__ == "__main__":
    main()
