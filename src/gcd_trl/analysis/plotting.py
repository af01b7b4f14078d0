"""Small matplotlib helpers: the Agg backend (no display), one style, PNGs small enough for a README."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; safe on headless machines and in tests)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "legend.fontsize": 7,
        }
    )
    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Save and close a figure as a 256-colour PNG (plots need no more; a third of the size)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    image = Image.open(buf).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)
    return path


def short(text: str, width: int = 28) -> str:
    """One-line label of at most `width` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
