"""FastAPI dependencies (``Annotated`` aliases): the app's services, the caller's scopes and task patterns
(``server/auth.py``), validated names (a task outside the caller's patterns is a 404, as if it did not exist).

Validation failures raise :mod:`vpetl.errors` types; ``server/errors.py`` turns them into responses.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.auth import Principal
from server.services import Services
from server.settings import Settings
from vpetl.errors import InvalidRequest, Unauthorized, UnknownTask
from vpetl.protocol import is_valid_task_name
from vpetl.store import is_valid_label

TASK_HELP = "task name: ^[a-z0-9][a-z0-9_.-]{0,63}$, no '..'"
# The same rule as one regular expression (no look-around, so every JSON-schema tool takes it): a dot is followed
# by a non-dot, except as the last character; with maxLength 64. The schema states it, and ``_check_task`` (the
# one rule in vpetl.protocol) enforces it; tests/server/test_openapi.py checks that the two agree.
TASK_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?$"
TASK_SCHEMA = {"pattern": TASK_PATTERN, "minLength": 1, "maxLength": 64}


def get_services(request: Request) -> Services:
    return request.app.state.services  # set by build_app; never a module global


def get_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def principal(request: Request) -> Principal:
    """The caller, as ``AuthMiddleware`` found it (no principal: the middleware did not run; refuse)."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Unauthorized("this route needs credentials: send Authorization: Bearer <key>")
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]
# Only for the OpenAPI document (the lock and /docs' Authorize button): AuthMiddleware has checked the header already.
BEARER = HTTPBearer(auto_error=False, description="an API key (vpk_…) or the admin token")
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def require(scope: str | None) -> Any:
    """A route dependency: the caller holds ``scope`` (403 ``insufficient_scope`` otherwise); ``None``: any
    authenticated caller (the middleware already refused everyone else). Every route declares one: the table
    test (tests/server/test_auth_routes.py) runs every scope against every route the OpenAPI document lists."""

    def check(request: Request, _: BearerDoc = None) -> Principal:
        caller = principal(request)
        if scope is not None:
            caller.require(scope)
        return caller

    return Depends(check)


AdminDep = require("admin")


def visible(request: Request, task: str, message: str) -> str:
    """``task`` if the caller's task patterns cover it; else 404, worded as for a task that does not exist."""
    if not principal(request).sees(task):
        raise UnknownTask(message)
    return task


def _check_task(task: str) -> str:
    if not is_valid_task_name(task):
        shown = repr(task[:64]) + ("…" if len(task) > 64 else "")
        raise InvalidRequest(f"invalid task name {shown}: expected ^[a-z0-9][a-z0-9_.-]{{0,63}}$ without '..'")
    return task


def task_path(
    request: Request, task: Annotated[str, Path(description=TASK_HELP, json_schema_extra=TASK_SCHEMA)]
) -> str:
    # the store's own wording for a missing task, so a hidden task and an absent one read the same
    return visible(request, _check_task(task), f"unknown task {task!r}")


def task_query(
    request: Request, task: Annotated[str, Query(description=TASK_HELP, json_schema_extra=TASK_SCHEMA)]
) -> str:
    # /predict's wording for a task without an adapter (server/pointers.py)
    return visible(request, _check_task(task), f"no adapter is published for task {task!r}")


LABEL_SCHEMA = {"pattern": r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$", "minLength": 1, "maxLength": 64}


def label_query(
    label: Annotated[
        str, Query(description="class label: ^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$", json_schema_extra=LABEL_SCHEMA)
    ],
) -> str:
    if not is_valid_label(label):
        raise InvalidRequest(f"invalid label {label[:64]!r}: expected ^[A-Za-z0-9][A-Za-z0-9 _.-]{{0,63}}$")
    return label


TaskPath = Annotated[str, Depends(task_path)]
TaskQuery = Annotated[str, Depends(task_query)]
LabelQuery = Annotated[str, Depends(label_query)]
