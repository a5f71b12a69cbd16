"""Busto's model package: body and face models, cameras, generator, renderer, export, data, CLI.

Never imports ``bpy`` (except the synthetic-data renderer, lazily) or ``train``.
"""

__version__ = "0.1.0"
