"""The embedded synthetic landmark world (``tools/make_synthetic.py`` runs it).

world.py: sizes, seeding, the training and test sets and their files; scenes.py draws the
landmarks' facades; context.py the sky, ground, clutter and occluders around them; render.py the
cameras, lighting and the easy / hard / junk labels.
"""

from datasets.synthetic.world import GND_NAME, SIZES, SyntheticSpec, generate, make_spec

__all__ = ["GND_NAME", "SIZES", "SyntheticSpec", "generate", "make_spec"]
