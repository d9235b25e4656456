"""Compares steering variants on the dev probes before choosing one (docs/evaluation.md).

    .venv/bin/python bench/steering_variants.py --data ../shared/eval/dev_targets.json

For every target of the probe file, the difference-of-means vectors are computed as the gateway
does (target questions vs the same questions about fictitious entities, last prompt token,
layers 15-65% of the depth), then each variant is applied to all of that target's probes at a
few strengths; greedy answers are scored with the file's leak rule and their perplexity under
the bare model:

- add:      h <- h + a * (mu_contrast - mu_target)                       (ActAdd / LUNAR-style)
- ablate:   h <- h - a * r r^T h, r = unit(mu_target - mu_contrast)     (directional ablation)
- add-norm: h <- |h| * unit(h + a * (mu_contrast - mu_target))          (norm-preserving, CAST)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapters.model import LoadedModel, load_model  # noqa: E402
from adapters.patches import ModelPatches, decoder_layers  # noqa: E402
from adapters.prompt import render  # noqa: E402
from adapters.scoring import perplexity  # noqa: E402
from adapters.steering import band, compute_steering  # noqa: E402
from app.probes import leaked_keywords, load_probe_file  # noqa: E402
from guards.contrast import question_pairs, target_questions  # noqa: E402
from guards.targets import TargetSpec  # noqa: E402
from guards.verdict import ChatTurn  # noqa: E402


def _generate(lm: LoadedModel, turns: list[ChatTurn], tokens: int) -> str:
    ids = torch.tensor([render(lm.tokenizer, turns).ids])
    with torch.inference_mode():
        out = lm.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False
        )
    return str(lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _hooks(lm: LoadedModel, vectors: dict[int, torch.Tensor], variant: str, a: float) -> list[Any]:
    layers = decoder_layers(lm.model)
    handles = []
    for index, v in vectors.items():
        r = -v / v.norm()

        def hook(
            module: Any, args: Any, output: Any, v: torch.Tensor = v, r: torch.Tensor = r
        ) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            if variant == "add":
                new = h + a * v
            elif variant == "ablate":
                new = h - a * (h @ r)[..., None] * r
            else:
                added = h + a * v
                new = added * (h.norm(dim=-1, keepdim=True) / added.norm(dim=-1, keepdim=True))
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(layers[index].register_forward_hook(hook))
    return handles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/eval/dev_targets.json")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    lm = load_model("bundled:smollm2-135m-instruct", Path.home() / ".cache" / "lethe")
    probe_set = load_probe_file(args.data)
    patches = ModelPatches(lm.model)
    grid = {"add": (0.5, 1.0), "ablate": (1.0,), "add-norm": (0.5, 1.0)}
    results: dict[str, dict[str, Any]] = {}
    bare_leaks, bare_ppl, n = 0, 0.0, 0
    for target in probe_set.targets:
        reg = target.register
        spec = TargetSpec(
            name=reg["name"],
            aliases=tuple(reg.get("aliases", ())),
            examples=tuple(reg.get("examples", ())),
        )
        pairs = question_pairs(spec, target_questions(spec))
        layers = band(len(decoder_layers(lm.model)), 0.15, 0.65)
        steering = compute_steering(lm, patches, pairs.target, pairs.contrast, layers)
        vectors = {layer: steering.vectors[i] for i, layer in enumerate(layers)}
        probes = [p for p in probe_set.probes if p.target_key == target.key]
        for probe in probes:
            turns = [ChatTurn(m["role"], str(m["content"])) for m in probe.as_messages()]
            answer = _generate(lm, turns, args.tokens)
            bare_leaks += bool(
                leaked_keywords(
                    answer, probe.conversation_text, target.leak_keywords, target.redact
                )
            )
            bare_ppl += perplexity(lm, turns, answer)
            n += 1
        for variant, strengths in grid.items():
            for a in strengths:
                key = f"{variant} a={a}"
                row = results.setdefault(key, {"leaks": 0, "ppl": 0.0, "n": 0})
                handles = _hooks(lm, vectors, variant, a)
                try:
                    answers = []
                    for probe in probes:
                        turns = [
                            ChatTurn(m["role"], str(m["content"])) for m in probe.as_messages()
                        ]
                        answers.append((probe, turns, _generate(lm, turns, args.tokens)))
                finally:
                    for handle in handles:
                        handle.remove()
                for probe, turns, answer in answers:
                    row["leaks"] += bool(
                        leaked_keywords(
                            answer, probe.conversation_text, target.leak_keywords, target.redact
                        )
                    )
                    row["ppl"] += perplexity(lm, turns, answer)
                    row["n"] += 1
    table = {"bare": {"leaks": bare_leaks, "n": n, "perplexity": round(bare_ppl / n, 1)}}
    for key, row in results.items():
        table[key] = {
            "leaks": row["leaks"],
            "n": row["n"],
            "perplexity": round(row["ppl"] / row["n"], 1),
        }
    print(f"{'variant':<16}{'greedy leak':>12}{'perplexity':>12}")  # noqa: T201
    for key, row in table.items():
        print(f"{key:<16}{row['leaks']:>6}/{row['n']:<5}{row['perplexity']:>12.1f}")  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
