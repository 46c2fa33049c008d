"""The colours, backgrounds and shapes of the tiny model's world, named once for generator, tests and demos.

The base U-Net learns only the colours in ``BASE_COLOURS`` by name. The VAE is trained on every colour in
``COLOURS``: a frozen VAE cannot draw a colour it never saw (it decodes magenta as red), so the extra
colours are there for a LoRA demo that teaches the base model a genuinely new colour.
"""

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 30),
    "magenta": (220, 40, 220),
    "orange": (250, 140, 20),
    "cyan": (30, 210, 220),
}
BASE_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
VAE_ONLY_COLOURS: tuple[str, ...] = ("magenta", "orange", "cyan")

BACKGROUNDS: dict[str, RGB] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
