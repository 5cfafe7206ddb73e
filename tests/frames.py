"""A frame source over real instances for viewport-model tests (the interface of
:class:`medviewer.workstation.frames.FrameSource`) whose decoding is explicit."""

from __future__ import annotations

from typing import Any

import numpy as np

from medviewer.imaging import DisplayPipeline


class Frames:
    """Frames of ``instances`` (all frames of multi-frame ones); :meth:`decode` fills the cache."""

    def __init__(self, instances: list[Any], uid: str = "series") -> None:
        self.instances = list(instances)
        self.frames = [(inst, f) for inst in self.instances
                       for f in range(max(1, int(getattr(inst, "number_of_frames", 1) or 1)))]
        self.uid = uid
        self._cache: dict[int, np.ndarray] = {}
        self._pipes: dict[int, DisplayPipeline] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def instance(self, k: int) -> Any:
        return self.frames[k][0]

    def pipeline(self, k: int) -> DisplayPipeline:
        if k not in self._pipes:
            inst, f = self.frames[k]
            self._pipes[k] = DisplayPipeline.from_instance(inst, f)
        return self._pipes[k]

    def cached(self, k: int) -> np.ndarray | None:
        return self._cache.get(k)

    def decode(self, k: int) -> np.ndarray:
        inst, f = self.frames[k]
        self._cache[k] = inst.stored_pixels(f)
        return self._cache[k]

    def spacing(self, k: int) -> tuple[float, float] | None:
        sp = getattr(self.instance(k), "pixel_spacing", None)
        return None if not sp else (float(sp[0]), float(sp[1]))
