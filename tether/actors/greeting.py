"""What a publisher's task stream opens with, once its LlmActors have heard that it opened
(the session writes it on StreamAnnounced)."""

from __future__ import annotations

from tether.actors.messages import OpenStream
from tether.actors.open_tasks import OpenTask, OpenTasks
from tether.common import sse, task_wire


def greet(opening: OpenStream, session_id: str, heartbeat_interval_s: float,
          tasks: OpenTasks) -> list[OpenTask]:
    """Write what the stream `opening` starts with: `hello`, the cancels made while it was
    down, and on a resume the frames the publisher has not seen. Returns the open tasks to
    send again (all of them when the publisher holds none; none on a resume)."""
    # This hub's result channel takes streamed chunks (docs/protocol.md, _provider-results).
    hello = task_wire.hello(session_id, heartbeat_interval_s, list(opening.names),
                            chunks_on_channel=True)
    opening.outbox.put(sse.frame("hello", sse.dumps(hello)))
    for frame in tasks.unsent_cancels():
        opening.outbox.put(frame)
    frames = tasks.replay(opening.last_event_id)
    if frames is None:
        return tasks.in_frame_order()
    for frame in frames:
        opening.outbox.put(frame)
    return []
