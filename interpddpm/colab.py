"""The first cell's setup on Google Colab: Drive for the runs, widgets that render.

Every chapter's install cell (:data:`interpddpm.book._INSTALL_CELL`) ends with
``setup(mount_drive=MOUNT_DRIVE)``. Off Colab it does nothing and prints nothing. On Colab it
mounts Google Drive at ``/content/drive`` (``MOUNT_DRIVE = False`` skips it: runs then live on
the runtime's disk and a disconnect loses them), so that the artifact cache
(:func:`interpddpm.profiles.cache_root`: runs, checkpoints every ``checkpoint_minutes``, sample
sets) outlives the runtime and the next notebook, or the same one after a disconnect, loads or
resumes what an earlier one trained; and it enables Colab's custom widget manager when the
installed ipywidgets is 8 or newer (Colab ships 7.x, which renders without it).

Serves every chapter (its first cell on Colab).
"""

from __future__ import annotations

import importlib.util

from .profiles import DRIVE_ROOT, cache_root, on_colab

__all__ = ["setup"]

MOUNT_POINT = str(DRIVE_ROOT.parent)  # "/content/drive", where Colab mounts Drive


def _widgets_major() -> int:
    try:
        import ipywidgets
    except ImportError:
        return 0
    return int(str(ipywidgets.__version__).split(".")[0])


def setup(mount_drive: bool = True) -> None:
    """Mount Drive (unless ``mount_drive`` is False or it is mounted) and enable the widget
    manager ipywidgets 8 needs, on Colab only; then say where the artifacts go."""
    if not on_colab() or importlib.util.find_spec("google.colab") is None:
        return
    from google.colab import output  # type: ignore[import-not-found]

    if _widgets_major() >= 8:
        output.enable_custom_widget_manager()
    if mount_drive and not DRIVE_ROOT.is_dir():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(MOUNT_POINT)
    cache_root()  # prints where runs and checkpoints go, once a session
