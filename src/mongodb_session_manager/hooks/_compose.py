"""``compose_hooks``: chain several metadata or feedback hooks into one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import SessionValidationError

#: ``hook(original_func, action, session_id, **kwargs)``, as ``metadata_hook`` and ``feedback_hook`` take.
Hook = Callable[..., Any]


def compose_hooks(*hooks: Hook | None) -> Hook:
    """Chain hooks so that each one gets the next as its ``original_func``; the last gets the real one.

    ``compose_hooks(audit, validate, sns)`` called by the manager runs ``audit``, which calls its
    ``original_func`` to run ``validate``, which calls its ``original_func`` to run ``sns``, which
    stores (the manager's original) and then notifies. A hook may refuse (raise), transform the
    arguments it passes on, or answer without calling on; whatever it returns is returned to the
    hook before it. Put notifying hooks (SNS, SQS) last, so they report what is actually written.

    ``None`` entries are skipped, so optional hooks can be listed inline.

    Args:
        *hooks: Hooks, outermost first.

    Returns:
        One hook. A single hook is returned as is; no hooks at all give a hook that just calls the
        original.

    Raises:
        SessionValidationError: An entry is neither callable nor ``None``.

    Example:
        ```python
        alerts = FeedbackSNSHook(topic_arn)
        manager = MongoDBSessionManager(session_id, connection_string=uri,
                                        feedback_hook=compose_hooks(audit_hook, alerts))
        ```
    """
    chain = tuple(hook for hook in hooks if hook is not None)
    for position, hook in enumerate(chain):
        if not callable(hook):
            raise SessionValidationError("hooks", f"entry {position} must be callable, got {type(hook).__name__}")
    if len(chain) == 1:
        return chain[0]
    return ComposedHook(chain)


class ComposedHook:
    """Several hooks acting as one (see :func:`compose_hooks`).

    Attributes:
        hooks: The hooks, outermost first.
    """

    def __init__(self, hooks: tuple[Hook, ...]) -> None:
        """Wrap ``hooks`` (outermost first); prefer :func:`compose_hooks`, which also validates them."""
        self.hooks = hooks

    def __repr__(self) -> str:
        return f"ComposedHook({', '.join(repr(hook) for hook in self.hooks)})"

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        """Run the chain for one operation."""
        return self._run(0, original_func, action, session_id, kwargs)

    def _run(
        self, index: int, original_func: Callable[..., Any], action: str, session_id: str, kwargs: dict[str, Any]
    ) -> Any:
        if index == len(self.hooks):
            return original_func(*kwargs.values())
        # The manager calls a hook with keyword arguments and the hook calls its original with the
        # same values positionally (update: metadata, delete: keys, add: feedback, get: none). The
        # next hook gets them back under their names, in that order; keywords work too.
        names = tuple(kwargs)

        def call_next(*args: Any, **overrides: Any) -> Any:
            if len(args) > len(names):
                raise TypeError(
                    f"action {action!r}: original_func takes at most {len(names)} positional argument(s) "
                    f"({', '.join(names) or 'none'}), got {len(args)}"
                )
            next_kwargs = dict(zip(names, args, strict=False))
            next_kwargs.update(overrides)
            return self._run(index + 1, original_func, action, session_id, next_kwargs)

        return self.hooks[index](call_next, action, session_id, **kwargs)
