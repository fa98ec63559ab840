"""An embeddable orchestration engine for AI-video pipelines.

Compose a pipeline, execute it on an :class:`Engine`, and run variants that depend on a base
execution: the base runs once, its variants run in parallel after it.
"""

from engine.clock import Clock, ManualClock, SystemClock
from engine.dsl import (
    Operation,
    Pipeline,
    add_subtitles,
    compose,
    generate_video,
    lip_sync,
    merge,
    reframe,
)
from engine.engine import Engine
from engine.errors import (
    ConfigError,
    EngineError,
    ExecutionFailed,
    IdempotencyConflict,
    InvalidSignature,
    InvalidState,
    PlanError,
    Problem,
    ProviderError,
    StorageError,
    UnknownExecution,
)
from engine.handle import PipelineExecution
from engine.metrics import EngineMetrics
from engine.models import (
    ErrorInfo,
    Execution,
    JobInfo,
    JobRequest,
    Notification,
    Progress,
    StatusReport,
    Video,
    Webhook,
)
from engine.plan import ExecutionPlan, JobSpec
from engine.ports import (
    ExecutionRecords,
    JobQueue,
    LeaseStore,
    Notifier,
    OutboxStore,
    Storage,
    VideoProvider,
)
from engine.retry import RetryPolicy
from engine.webhooks import verify_webhook

__all__ = [
    "Clock",
    "ConfigError",
    "Engine",
    "EngineError",
    "EngineMetrics",
    "ErrorInfo",
    "Execution",
    "ExecutionFailed",
    "ExecutionPlan",
    "ExecutionRecords",
    "IdempotencyConflict",
    "InvalidSignature",
    "InvalidState",
    "JobInfo",
    "JobQueue",
    "JobRequest",
    "JobSpec",
    "LeaseStore",
    "ManualClock",
    "Notification",
    "Notifier",
    "Operation",
    "OutboxStore",
    "Pipeline",
    "PipelineExecution",
    "PlanError",
    "Problem",
    "Progress",
    "ProviderError",
    "RetryPolicy",
    "StatusReport",
    "Storage",
    "StorageError",
    "SystemClock",
    "UnknownExecution",
    "Video",
    "VideoProvider",
    "Webhook",
    "add_subtitles",
    "compose",
    "generate_video",
    "lip_sync",
    "merge",
    "reframe",
    "verify_webhook",
]
