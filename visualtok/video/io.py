"""Video I/O for the video family: ``probe``, ``frame_times``, ``read_video``/``read_videos``,
``write_video``, ``frame_grid``/``save_frame_grid``.

The implementation lives in the data layer (``visualtok.data.video_io``) so that datasets can use
it without importing a model family; this module is its public name beside the video models.
"""

from ..data.video_io import *  # noqa: F403
from ..data.video_io import __all__  # noqa: F401
