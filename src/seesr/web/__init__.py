"""Web UI (``seesr serve``): a Gradio page to upload a photo, see and edit DAPE's tags, upscale and compare, and
to upscale a short clip (the Video tab).

Importing this package does not import Gradio or load any model; :func:`seesr.web.app.build_app` does the former
and takes an already loaded pipeline. Gradio comes with the ``web`` extra (``pip install 'seesr[web]'``).
"""

from __future__ import annotations

from seesr.web.app import WebController, build_app, launch_app
from seesr.web.runner import PipelineRunner, RunCancelled, UpscaleResult
from seesr.web.settings import UserInputError, WebLimits, WebSettings

__all__ = [
    "PipelineRunner",
    "RunCancelled",
    "UpscaleResult",
    "UserInputError",
    "WebController",
    "WebLimits",
    "WebSettings",
    "build_app",
    "launch_app",
]
