"""The artifact poster: the flow's thread never waits for the API, and nothing asked is lost or reordered."""

from __future__ import annotations

import threading
import uuid

import pytest

from tasks import artifacts


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, *args: object) -> None:
        self.warnings.append(message % args)


def test_posts_in_order_coalesces_progress_and_survives_a_failed_post(monkeypatch):
    done: list[object] = []
    gate = threading.Event()
    progress_id = uuid.uuid4()
    monkeypatch.setattr(
        artifacts, "start_progress", lambda total: done.append(("start", total)) or progress_id
    )
    monkeypatch.setattr(
        artifacts, "update_progress", lambda aid, pct, text: done.append(("progress", aid, pct, text))
    )

    def fail() -> None:
        raise ConnectionError("API down")

    log = Log()
    poster = artifacts.ArtifactPoster(log)
    poster.post("a slow one", gate.wait)  # the poster is busy: what follows queues
    poster.start_progress(4)
    for i in range(1, 5):
        poster.progress(25.0 * i, f"{i}/4 chunks")  # returns at once: nothing is sent on this thread
    poster.post("the table", lambda: done.append("table"))
    poster.post("the summary", fail)
    poster.post("after the failure", lambda: done.append("after"))
    assert done == []
    gate.set()
    poster.close()
    # queued calls in order, then only the latest progress, posted with the artifact's id
    assert done == [("start", 4), "table", "after", ("progress", progress_id, 100.0, "4/4 chunks")]
    assert log.warnings == ["could not post the summary: API down"]
    with pytest.raises(RuntimeError, match="closed"):
        poster.post("too late", lambda: None)


def test_progress_without_an_artifact_is_dropped_quietly(monkeypatch):
    sent: list[object] = []
    monkeypatch.setattr(
        artifacts, "create_progress_artifact", lambda **kw: (_ for _ in ()).throw(OSError("no"))
    )
    monkeypatch.setattr(artifacts, "update_progress_artifact", lambda **kw: sent.append(kw))
    log = Log()
    poster = artifacts.ArtifactPoster(log)
    poster.start_progress(2)
    poster.progress(50.0, "1/2 chunks")
    poster.close()
    assert sent == [] and log.warnings == ["could not post the progress artifact: no"]
