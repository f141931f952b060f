"""Draw a template's thumbnail as a schematic of its graph (node boxes, titles, links) with Pillow, for machines
without the browser docs/make_thumbnails.py drives; the real canvas capture replaces it when one is at hand.

    python docs/schematic_thumbnail.py workflows/photo_edit_refined_with_pti.json   # -> workflows/<name>.jpg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN, TITLE = 1024, 576, 24, 30
BACKGROUND, NODE, TITLE_BAR, TEXT, LINK = (32, 32, 36), (53, 53, 58), (70, 70, 78), (225, 225, 225), (140, 170, 210)
OURS = (86, 62, 110)  # our nodes' title bar, so the pack's part of the graph stands out


def draw(ui: dict) -> Image.Image:
    nodes = {n["id"]: n for n in ui["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] - TITLE for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    scale = min((WIDTH - 2 * MARGIN) / (x1 - x0), (HEIGHT - 2 * MARGIN) / (y1 - y0))

    def at(x, y):
        return MARGIN + (x - x0) * scale, MARGIN + (y - y0) * scale

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, int(15 * scale / 0.4)))
    for _, src, _, dst, dst_slot, _ in ui["links"]:
        a, b = nodes[src], nodes[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 10)
        end = at(b["pos"][0], b["pos"][1] + 20 + 20 * dst_slot)
        pen.line([start, ((start[0] + end[0]) / 2, start[1]), ((start[0] + end[0]) / 2, end[1]), end], fill=LINK, width=2)
    for n in nodes.values():
        left, top = at(n["pos"][0], n["pos"][1] - TITLE)
        right, bottom = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        pen.rounded_rectangle([left, top, right, bottom], radius=6, fill=NODE)
        bar = OURS if n["type"].startswith("TargetCLIP_") else TITLE_BAR
        pen.rounded_rectangle([left, top, right, top + TITLE * scale], radius=6, fill=bar)
        title = n["type"].removeprefix("TargetCLIP_")
        pen.text((left + 6, top + 4), title, fill=TEXT, font=font)
    return image


def main(argv=None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        out = path.with_suffix(".jpg")
        draw(json.loads(path.read_text(encoding="utf-8"))).save(out, "JPEG", quality=90)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
