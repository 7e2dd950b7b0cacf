"""Typed Python client for recsvc, the recommendation service for customer-service chatbots.

    from recsvc_client import RecsvcClient, RecsvcError

    with RecsvcClient("http://recsvc:8000", "k-chatbot-secret") as client:
        result = client.recommend(user_id="u42", query="想学Python数据分析", n=5, explain=True)
        for item in result.items:
            print(item.title, [reason.title for reason in item.reasons or []])

Methods are named after the operationIds of the service's openapi.yaml (`OPERATIONS` maps each
to its method); results are the pydantic models of `recsvc_client.models`; every failure raises
a `RecsvcError` carrying the problem document and the request id.
"""

from recsvc_client._operations import OPERATIONS
from recsvc_client._version import __version__
from recsvc_client.client import DEFAULT_TIMEOUT, AsyncRecsvcClient, RecsvcClient
from recsvc_client.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RecsvcConnectionError,
    RecsvcError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from recsvc_client.models import (
    Audience,
    AudienceMember,
    Event,
    EventTypes,
    FieldError,
    Health,
    IngestResult,
    ItemOut,
    ItemWithId,
    JobOut,
    ModelVersionList,
    ModelVersionOut,
    Overview,
    Profile,
    Readiness,
    Reason,
    Recommendations,
    RecommendedItem,
    SegmentList,
    SegmentMembers,
    SegmentOut,
    Timeline,
    UpsertResult,
    UserOut,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "OPERATIONS",
    "AsyncRecsvcClient",
    "Audience",
    "AudienceMember",
    "Conflict",
    "Event",
    "EventTypes",
    "FieldError",
    "Forbidden",
    "Health",
    "IngestResult",
    "ItemOut",
    "ItemWithId",
    "JobOut",
    "ModelVersionList",
    "ModelVersionOut",
    "NotFound",
    "Overview",
    "Profile",
    "Readiness",
    "Reason",
    "Recommendations",
    "RecommendedItem",
    "RecsvcClient",
    "RecsvcConnectionError",
    "RecsvcError",
    "SegmentList",
    "SegmentMembers",
    "SegmentOut",
    "Timeline",
    "Unauthorized",
    "Unavailable",
    "UpsertResult",
    "UserOut",
    "ValidationFailed",
    "__version__",
]
