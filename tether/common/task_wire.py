"""The wire shapes of the task stream and of task results (docs/protocol.md, Stream and Task
result), written once for both programs: the hub builds frames and reads results, the
publisher reads frames and builds results. camelCase on the wire, as the protocol says.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, final

DEFAULT_ENDPOINT = "chat/completions"


# --- frames the hub sends down the task stream -------------------------------------------


class Hello(TypedDict):
    providerSessionId: str
    heartbeatIntervalS: float
    llms: NotRequired[list[str]]  # every name the session publishes
    chunksOnChannel: NotRequired[bool]  # the result channel takes streamed chunks


class InferTask(TypedDict):
    kind: Literal["infer"]
    taskId: str
    llmName: str
    request: dict[str, Any]
    streaming: bool
    endpoint: NotRequired[str]  # absent: chat/completions


class WakeTask(TypedDict):
    kind: Literal["wake"]
    taskId: str
    llmName: str


class CancelTask(TypedDict):
    kind: Literal["cancel"]
    taskId: str


Task = InferTask | WakeTask | CancelTask


def hello(session_id: str, heartbeat_interval_s: float,
          names: list[str] | None = None, chunks_on_channel: bool = False) -> Hello:
    frame: Hello = {"providerSessionId": session_id, "heartbeatIntervalS": heartbeat_interval_s}
    if names is not None:
        frame["llms"] = names
    if chunks_on_channel:
        frame["chunksOnChannel"] = True
    return frame


def infer_task(task_id: str, llm_name: str, request: dict[str, Any], streaming: bool,
               endpoint: str = DEFAULT_ENDPOINT) -> InferTask:
    task: InferTask = {"kind": "infer", "taskId": task_id, "llmName": llm_name,
                       "request": request, "streaming": streaming}
    if endpoint != DEFAULT_ENDPOINT:
        task["endpoint"] = endpoint
    return task


def wake_task(task_id: str, llm_name: str) -> WakeTask:
    return {"kind": "wake", "taskId": task_id, "llmName": llm_name}


def cancel_task(task_id: str) -> CancelTask:
    return {"kind": "cancel", "taskId": task_id}


def endpoint_of(task: InferTask) -> str:
    return task.get("endpoint", DEFAULT_ENDPOINT)


# --- results the publisher posts ---------------------------------------------------------
# A result is exactly one of these, told apart by its key (`"chunk" in result`): final, so
# that the type checker narrows the union on that test.


class Chunk(TypedDict, total=False):
    data: str
    done: bool


@final
class FinalResult(TypedDict):
    status: int
    body: Any


@final
class ChunkResult(TypedDict):
    chunk: Chunk
    index: NotRequired[int]  # its place in its task's stream: applied once (docs/protocol.md)


@final
class ChunksResult(TypedDict):
    chunks: list[Chunk]
    index: NotRequired[int]  # the place of its first chunk in its task's stream


class ErrorDetail(TypedDict, total=False):
    message: str
    status: int
    code: str
    retryable: bool


@final
class ErrorResult(TypedDict):
    error: ErrorDetail


Result = FinalResult | ChunkResult | ChunksResult | ErrorResult


def final_result(status: int, body: Any) -> FinalResult:
    return {"status": status, "body": body}


def chunks_result(chunks: list[Chunk], index: int | None = None) -> ChunksResult:
    result: ChunksResult = {"chunks": chunks}
    if index is not None:
        result["index"] = index
    return result


def error_result(message: str, status: int = 502, code: str | None = None,
                 retryable: bool = False) -> ErrorResult:
    """An error result. `retryable` says the backend never saw the task (the hub may then
    run it on another pool member)."""
    error: ErrorDetail = {"message": message, "status": status}
    if code is not None:
        error["code"] = code
    if retryable:
        error["retryable"] = True
    return {"error": error}
