"""Figs. 3 and 5 from the reproduction's checkpoints: the steps that draw them, and the page section.

Fig. 3: style transfer (``probe.style``), a single-image model beside the supervised one. Fig. 5: every
conv layer of the single-image model, activation maximisation (``probe.visualize maximize``) and the
CIFAR-10 test images that excite each of four seeded units most (``retrieve``).
"""
from __future__ import annotations

import os

import numpy as np

from augment.files import atomic_path
from augment.seeds import mix
from repro.records import read_json
from repro.steps import Step

FIG5_UNITS = 4          # the paper's "four random non-cherry-picked target filters" per layer


def fig5_units(width: int, seed: int, layer_index: int) -> list[int]:
    """Four distinct units of a layer, drawn from (seed, layer): random, not picked by how they look."""
    rng = np.random.default_rng(mix(seed, layer_index, 0xF165))
    return sorted(int(u) for u in rng.choice(width, size=min(FIG5_UNITS, width), replace=False))


def steps(cfg, folder: str, data: str, single: str, arch: str, sup: str,
          content: str, style: str) -> tuple[list[Step], dict[str, str]]:
    """The figure steps for checkpoint ``single`` (and ``sup`` beside it in Fig. 3), and their PNGs by part."""
    from train.models import ARCHS

    pngs = {"fig3": os.path.join(folder, "fig3.png")}
    out = [Step("fig3 style transfer", ("probe.style", "--checkpoint", single, "--compare", sup, "--content", content,
                                        "--style", style, "--out", pngs["fig3"], "--steps", str(cfg.style_steps),
                                        "--size", str(cfg.style_size), "--device", cfg.device), (pngs["fig3"],))]
    for i, (layer, width, *_) in enumerate(ARCHS[arch]):
        units = ",".join(str(u) for u in fig5_units(width, cfg.seed, i))
        common = ("--checkpoint", single, "--layer", layer, "--units", units, "--device", cfg.device)
        mx, top = os.path.join(folder, f"fig5-maximize-{layer}.png"), os.path.join(folder, f"fig5-retrieve-{layer}.png")
        pngs[f"max-{layer}"], pngs[f"top-{layer}"] = mx, top
        out += [Step(f"fig5 maximize {layer}", ("probe.visualize", "maximize", *common, "--out", mx, "--steps",
                                                str(cfg.maximize_steps), "--size", str(cfg.maximize_size),
                                                "--seed", str(cfg.seed)), (mx,)),
                Step(f"fig5 retrieve {layer}", ("probe.visualize", "retrieve", *common, "--data",
                                                os.path.join(data, "test"), "--top", "9", "--out", top), (top,))]
    return out, pngs


def compose_fig5(pngs: dict[str, str], path: str) -> bool:
    """One PNG laid out like Fig. 5: a row per layer, activation maximisation left, top images right."""
    from PIL import Image

    layers = [k.removeprefix("max-") for k in pngs if k.startswith("max-")]
    pairs = [(pngs[f"max-{ly}"], pngs[f"top-{ly}"]) for ly in layers]
    if not pairs or not all(os.path.isfile(a) and os.path.isfile(b) for a, b in pairs):
        return False
    rows = []
    for a, b in pairs:
        left, right = (np.asarray(Image.open(p).convert("RGB")) for p in (a, b))
        h = max(left.shape[0], right.shape[0])
        rows.append(np.concatenate([_pad(left, h, left.shape[1]), _pad(right, h, right.shape[1])], axis=1))
    w = max(r.shape[1] for r in rows)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([_pad(r, r.shape[0], w) for r in rows], axis=0)).save(tmp, format="PNG")
    return True


def _pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


def section(pngs: dict[str, str], stem: str, model: str) -> str:
    """The figures' section, from the JSON each figure command wrote beside its PNG."""
    style = read_json(os.path.splitext(pngs.get("fig3", ""))[0] + ".json")
    parts = []
    if style:
        c = style["config"]
        runs = "; ".join(f"{r['checkpoint']['method']}: loss {r['losses']['start']['total']:.3g} → "
                         f"{r['losses']['end']['total']:.3g} in {r['losses']['evaluations']} evaluations"
                         for r in style["runs"])
        parts += [f"### Fig. 3: style transfer\n\n![Fig. 3]({stem}-fig3.png)\n",
                  f"`probe.style`: content `{os.path.basename(style['content']['path'])}`, style "
                  f"`{os.path.basename(style['style']['path'])}`, {c['size']} px, content layers "
                  f"{','.join(c['content_layers'])}, style layers {','.join(style['runs'][0]['style_layers'])}, "
                  f"{c['steps']} L-BFGS evaluations, {c['loss_scale']} losses (docs/figures.md); {runs}.\n"]
    rows = []
    for key in [k for k in pngs if k.startswith("max-")]:
        layer = key.removeprefix("max-")
        mx = read_json(os.path.splitext(pngs[key])[0] + ".json")
        top = read_json(os.path.splitext(pngs[f"top-{layer}"])[0] + ".json")
        if mx and top:
            rows.append(f"| {layer} | {','.join(map(str, mx['units']))} | {mx['config']['steps']} steps, "
                        f"{mx['config']['size']} px | top {top['config']['top']} of {top['images']:,} images, "
                        f"{top['image_side']} px |")
    if rows:
        parts += [f"### Fig. 5: units of {model}\n\n![Fig. 5]({stem}-fig5.png)\n",
                  "Left: activation maximisation (`probe.visualize maximize`); right: the images of "
                  "CIFAR-10 test that excite the unit most (`retrieve`). Units drawn at random from the seed.\n",
                  "| layer | units | maximisation | retrieval |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"]
    return "\n".join(parts) if parts else "_no figure has finished yet_\n"
