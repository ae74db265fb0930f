"""FastAPI dependencies (``Annotated`` aliases): the app's services, the admin check, validated names.

Validation failures raise :mod:`vpetl.errors` types; ``server/errors.py`` turns them into responses.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from server.services import Services
from server.settings import Settings
from vpetl.errors import Forbidden, InvalidRequest, Unauthorized
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


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Write routes: ``Authorization: Bearer <admin token>`` when a token is configured.

    Without a configured token the server only binds loopback (``Settings.check_bind``), so writes are open to
    the local user. Missing credentials → 401 with ``WWW-Authenticate: Bearer``; wrong ones → 403.
    """
    expected = settings.admin_token
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this route needs an admin token: send Authorization: Bearer <VPETL_ADMIN_TOKEN>")
    # constant-time comparison: response timing must not reveal how much of a guess was right
    if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise Forbidden("the admin token is not valid")


AdminDep = Depends(require_admin)


def _check_task(task: str) -> str:
    if not is_valid_task_name(task):
        shown = repr(task[:64]) + ("…" if len(task) > 64 else "")
        raise InvalidRequest(f"invalid task name {shown}: expected ^[a-z0-9][a-z0-9_.-]{{0,63}}$ without '..'")
    return task


def task_path(task: Annotated[str, Path(description=TASK_HELP, json_schema_extra=TASK_SCHEMA)]) -> str:
    return _check_task(task)


def task_query(task: Annotated[str, Query(description=TASK_HELP, json_schema_extra=TASK_SCHEMA)]) -> str:
    return _check_task(task)


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
