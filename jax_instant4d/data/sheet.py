"""Contact sheets of teacher clips: one row per clip, source | per time step: driving frame, teacher views."""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import UInt8

from jax_instant4d.data import record

GAP = 6


def clip_row(rec: dict, max_times: int = 4, max_views: int = 2) -> UInt8[np.ndarray, "R W 3"]:
    """uint8 [R, W, 3]: the source, then per time step the driving frame and its teacher views."""
    res = int(rec["resolution"])
    t, v = int(rec["num_times"]), int(rec["num_views"])
    gap = np.full((res, GAP, 3), 40, np.uint8)
    parts = [record.decode_image(rec["source_image"]), gap]
    for ti in range(min(t, max_times)):
        parts.append(record.decode_image(rec["driving_images"][ti]))
        for vi in range(min(v, max_views)):
            parts.append(record.decode_image(rec["target_images"][ti * v + vi]))
        parts.append(gap)
    return np.concatenate(parts[:-1], 1)


def _header(res: int, times: int, views: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (width, 18), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    labels = [(0, "source")]
    x = res + GAP
    for ti in range(times):
        labels.append((x, f"driving t{ti}"))
        labels += [(x + (vi + 1) * res, f"teacher t{ti} v{vi}") for vi in range(views)]
        x += (views + 1) * res + GAP
    for x0, text in labels:
        draw.text((x0 + 3, 3), text, fill=(230, 230, 230), font=font)
    return np.asarray(im)


def contact_sheet(path: str | os.PathLike, split: str, out: str | os.PathLike, clips: int = 6,
                  max_times: int = 4, max_views: int = 2) -> UInt8[np.ndarray, "H W 3"]:
    """Writes (and returns) a PNG of the first ``clips`` records of ``split`` of the dataset at ``path``."""
    from PIL import Image

    from jax_instant4d.data.pipeline import open_source

    src = open_source(path, split)
    recs = [src[i] for i in range(min(clips, len(src)))]
    rows = [clip_row(r, max_times, max_views) for r in recs]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 3), (0, width - r.shape[1]), (0, 0))) for r in rows]
    res = int(recs[0]["resolution"])
    head = _header(res, min(int(recs[0]["num_times"]), max_times), min(int(recs[0]["num_views"]), max_views), width)
    sheet = np.concatenate([head, *rows], 0)
    Image.fromarray(sheet).save(out)
    return sheet
