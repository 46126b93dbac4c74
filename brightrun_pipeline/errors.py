"""The small vocabulary of domain errors, mapped once to exit codes and request statuses."""

from __future__ import annotations


class BrightRunError(Exception):
    """Base of every error the pipeline raises on purpose."""

    exit_code = 1


class UsageError(BrightRunError):
    """The caller asked for something that cannot be done as asked (bad option, unknown file)."""

    exit_code = 2


class NotFound(UsageError):
    """The caller named something that does not exist (a file, version, request, batch)."""


class Conflict(UsageError):
    """The request clashes with the current state (e.g. retrying a request that did not fail)."""


class Forbidden(BrightRunError):
    """The caller may not do this (e.g. add to a training file they did not create)."""

    exit_code = 2


class RequestOutcomeError(BrightRunError):
    """Why a request did not publish: a message and, where it applies, a reason per conversation."""

    def __init__(self, message: str, conversations: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.conversations = dict(conversations or {})

    def as_error(self) -> dict[str, object]:
        """The JSON stored in `selection_requests.error`."""
        return {"message": self.message, "conversations": self.conversations}


class RequestRejected(RequestOutcomeError):
    """A selection request breaks the rules; carries one reason per offending conversation."""

    exit_code = 3


class ProcessingFailed(RequestOutcomeError):
    """A valid request could not be built or published."""

    exit_code = 4


class SourceError(ProcessingFailed):
    """A conversation's enriched file is missing, not JSON, or not in the enriched format."""

    def __init__(self, conversation_id: str, reason: str) -> None:
        super().__init__(
            f"source file of conversation {conversation_id} is unusable: {reason}",
            {conversation_id: reason},
        )
        self.conversation_id = conversation_id
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised in worker processes too: rebuild it from its own arguments when unpickled.
        return (SourceError, (self.conversation_id, self.reason))


class StaleVersion(ProcessingFailed):
    """Another build published first, or took this build's version over: a transient outcome,
    retried on top of the new current version."""


class ChecksFailed(ProcessingFailed):
    """A built version failed its blocking checks: nothing was published."""


class AttemptLost(ProcessingFailed):
    """The process running an attempt died or lost its database or storage: run it again."""


class AttemptSuperseded(ProcessingFailed):
    """A run belongs to an attempt of a request that is no longer the request's current one."""


class ObjectNotFound(BrightRunError):
    """A storage object does not exist (permanent)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"object not found: {bucket}/{key}")
        self.bucket = bucket
        self.key = key


class ObjectExists(BrightRunError):
    """A write-once object already exists with different content."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"object already exists with other content: {bucket}/{key}")
        self.bucket = bucket
        self.key = key


class TransientStorageError(BrightRunError):
    """A storage call failed in a way that may succeed on retry (timeouts, 5xx, throttling)."""


class InvalidKey(BrightRunError):
    """A storage key is malformed or would escape its bucket."""

    exit_code = 2


def is_retryable(error: BaseException) -> bool:
    """Whether a failed attempt may succeed if run again: transient storage and database faults,
    lost builds and crashed processes are; broken rules, bad sources and failed checks are not."""
    if isinstance(error, StaleVersion | AttemptLost | TransientStorageError):
        return True
    # Ctrl-C is the user's decision to stop: the request fails (and can be retried by hand).
    return not isinstance(error, BrightRunError | KeyboardInterrupt)
