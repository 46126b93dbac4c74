"""Heartbeats: a process shows it is still working on a request, a run or a build."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

logger = logging.getLogger(__name__)


class Heartbeat:
    """Calls `beat` now and then every `interval` seconds on a daemon thread until closed.

    A beat that fails (the database is briefly unreachable, say) is logged and tried again at
    the next interval; `beat` returning False means what it kept alive is no longer ours, and
    `lost` says so from then on.
    """

    def __init__(self, beat: Callable[[], bool | None], interval: float, *, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._beat_once()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop beating (waits for a beat in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat_once()

    def _beat_once(self) -> None:
        try:
            if self._beat() is False:
                self.lost = True
        except Exception as error:  # noqa: BLE001 - a missed beat is retried, never fatal
            logger.warning("%s: heartbeat failed: %s", self._name, error)
