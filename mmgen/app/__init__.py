"""The application layer: training, the ``mmgen`` command, the demo, checkpoint inspection and upgrades.

It sits above everything else — it may import the sibling packages (``tokenizers_visual``,
``tokenizers_audio``, ``pipelines``) to build what a run config or a saved folder names, while the
library modules of ``mmgen`` below it import none of them.
"""
