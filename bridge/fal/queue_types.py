"""What the queue protocol's answers and settings look like: request handles, status, timeouts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestHandle:
    """A request fal accepted; persisted in the journal so a restart polls instead of resubmitting."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestHandle:
        return cls(**{k: str(data[k]) for k in ("request_id", "status_url", "response_url", "cancel_url")})


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str = "INFO"
    timestamp: str = ""


@dataclass(frozen=True)
class QueueStatus:
    state: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    queue_position: int | None = None
    logs: tuple[LogLine, ...] = ()
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueStatus:
        logs = tuple(
            LogLine(str(item.get("message", "")), str(item.get("level", "INFO")), str(item.get("timestamp", "")))
            for item in (data.get("logs") or [])
            if isinstance(item, dict)
        )
        position = data.get("queue_position")
        return cls(
            state=str(data.get("status", "")),
            queue_position=position if isinstance(position, int) else None,
            logs=logs,
            error=data.get("error"),
            error_type=data.get("error_type"),
            metrics=data.get("metrics") or {},
        )


@dataclass(frozen=True)
class Timeouts:
    """The official client's (fal-client 1.0.3): submit and every other call 120 s; status, result and
    cancel `Timeout(120, connect=30)` (a stalled TLS read once hung its clients forever); the connect to a
    host with a backup is capped at 5 s (`hosts.BACKUP_CONNECT_CAP`)."""

    connect: float = 30.0
    read: float = 120.0  # submit, uploads' API calls
    status_read: float = 120.0  # status, status stream, result, cancel
    write: float = 120.0
