"""Durable MongoDB session storage for Strands Agents.

One MongoDB document per session, agents embedded, each agent's messages an ordered array; a
process-wide connection pool; and a session manager that adds metrics, metadata and feedback.
"""

from ._encryption import ClientSideEncryption, data_key_name
from ._indexes import SHARD_KEYS, shard_collection_commands
from ._migration import encrypt_session
from ._version import __version__
from .errors import (
    AWSHooksUnavailableError,
    MongoDBSessionError,
    SessionConflictError,
    SessionEncryptionError,
    SessionNotFoundError,
    SessionStorageError,
    SessionTooLargeError,
    SessionValidationError,
)
from .hooks import (
    FeedbackSNSHook,
    MetadataSQSHook,
    compose_hooks,
    create_feedback_sns_hook,
    create_metadata_sqs_hook,
    is_feedback_sns_hook_available,
    is_metadata_sqs_hook_available,
)
from .mongodb_connection_pool import DEFAULT_CLIENT_OPTIONS, MongoDBConnectionPool
from .mongodb_session_factory import (
    MongoDBSessionManagerFactory,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from .mongodb_session_manager import MongoDBSessionManager, create_mongodb_session_manager
from .mongodb_session_repository import MongoDBSessionRepository
from .storage import MongoDBStorage, migrate_sessions

__all__ = [
    "DEFAULT_CLIENT_OPTIONS",
    "SHARD_KEYS",
    "AWSHooksUnavailableError",
    "ClientSideEncryption",
    "FeedbackSNSHook",
    "MetadataSQSHook",
    "MongoDBConnectionPool",
    "MongoDBSessionError",
    "MongoDBSessionManager",
    "MongoDBSessionManagerFactory",
    "MongoDBSessionRepository",
    "MongoDBStorage",
    "SessionConflictError",
    "SessionEncryptionError",
    "SessionNotFoundError",
    "SessionStorageError",
    "SessionTooLargeError",
    "SessionValidationError",
    "__version__",
    "close_global_factory",
    "compose_hooks",
    "create_feedback_sns_hook",
    "create_metadata_sqs_hook",
    "create_mongodb_session_manager",
    "data_key_name",
    "encrypt_session",
    "get_global_factory",
    "initialize_global_factory",
    "is_feedback_sns_hook_available",
    "is_metadata_sqs_hook_available",
    "migrate_sessions",
    "shard_collection_commands",
]
