"""The loss plot in the step folder, drawn with Pillow.

matplotlib took ~0.7 s of every training pass (0.55 s to import pyplot, 0.14 s
to draw), 7% of a small job's whole process; a loss curve needs lines, ticks
and a few labels, which Pillow's ``ImageDraw`` and its built-in scalable font
draw in ~30 ms (Pillow >= 10.1).
"""

from __future__ import annotations

import math
from pathlib import Path

TRAIN_COLOUR = (31, 119, 180)
EVAL_COLOUR = (255, 127, 14)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.3g}"


def plot_loss(path: Path, train: list[tuple[int, float]], evals: list[tuple[int, float]], *, title: str,
              size: tuple[int, int] = (600, 350)) -> Path:
    """Write a PNG of the training (and eval) loss against the training step."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=14)
    left, right, top, bottom = 62, width - 14, 30, height - 42
    points = [(s, v) for s, v in list(train) + list(evals) if math.isfinite(v)]
    steps = [s for s, _ in points] or [0, 1]
    values = [v for _, v in points] or [0.0, 1.0]
    x_ticks = nice_ticks(min(steps), max(steps))
    y_ticks = nice_ticks(min(values), max(values))
    x0, x1 = (x_ticks[0], x_ticks[-1]) if len(x_ticks) > 1 else (min(steps) - 1, max(steps) + 1)
    y0, y1 = (y_ticks[0], y_ticks[-1]) if len(y_ticks) > 1 else (min(values) - 1, max(values) + 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (right - left), bottom - (value - y0) / (y1 - y0) * (bottom - top))

    for tick in x_ticks:
        x, _ = xy(tick, y0)
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        text = _label(tick)
        draw.text((x - draw.textlength(text, font=font) / 2, bottom + 5), text, fill="black", font=font)
    for tick in y_ticks:
        _, y = xy(x0, tick)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        text = _label(tick)
        draw.text((left - 6 - draw.textlength(text, font=font), y - 7), text, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right - draw.textlength("step", font=font)) / 2, height - 20), "step", fill="black", font=font)
    ylabel = Image.new("RGB", (40, 14), "white")
    ImageDraw.Draw(ylabel).text((4, 0), "loss", fill="black", font=font)
    image.paste(ylabel.rotate(90, expand=True), (4, (top + bottom) // 2 - 20))
    draw.text(((width - draw.textlength(title, font=title_font)) / 2, 8), title, fill="black", font=title_font)

    legend = []
    train_xy = [xy(s, v) for s, v in train if math.isfinite(v)]
    if train_xy:
        if len(train_xy) > 1:
            draw.line(train_xy, fill=TRAIN_COLOUR, width=2)
        legend.append(("train loss", TRAIN_COLOUR))
    eval_xy = [xy(s, v) for s, v in evals if math.isfinite(v)]
    if eval_xy:
        if len(eval_xy) > 1:
            draw.line(eval_xy, fill=EVAL_COLOUR, width=2)
        for x, y in eval_xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=EVAL_COLOUR)
        legend.append(("eval loss", EVAL_COLOUR))
    for i, (text, colour) in enumerate(legend):
        y = top + 10 + 16 * i
        x = right - 20 - max(draw.textlength(t, font=font) for t, _ in legend) - 30
        draw.line([(x, y), (x + 22, y)], fill=colour, width=2)
        draw.text((x + 28, y - 7), text, fill="black", font=font)
    image.save(path, format="PNG")
    return path
