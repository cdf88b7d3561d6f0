"""vault.v1.IdentityService and vault.v1.AuditService: requests in, use cases called,
messages out. Who may call them is decided before they run (vault.transport.security)."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from vault.domain.audit import AuditRecord
from vault.domain.audit_verification import FindingKind
from vault.domain.errors import InvalidArgument
from vault.domain.identity import (
    AccessKey,
    AccessLevel,
    Account,
    ApiKey,
    ApiScope,
    CredentialState,
    Grant,
    RateLimit,
)
from vault.domain.ports import AuditFilter
from vault.gen.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    resources_pb2,
)
from vault.service.audit import AuditLog
from vault.service.identity import IdentityManagement
from vault.transport.convert import optional_time, timestamp
from vault.transport.page_budget import fit_response

_STATES = {
    CredentialState.ACTIVE: resources_pb2.CREDENTIAL_STATE_ACTIVE,
    CredentialState.REVOKED: resources_pb2.CREDENTIAL_STATE_REVOKED,
}
_FINDINGS = {
    kind: audit_service_pb2.AuditFindingKind.Value(f"AUDIT_FINDING_KIND_{kind.name}")
    for kind in FindingKind
}


def _optional(value: datetime | None) -> Timestamp | None:
    return None if value is None else timestamp(value)


def account_to_proto(account: Account) -> resources_pb2.Account:
    return resources_pb2.Account(
        name=f"accounts/{account.account_id}",
        display_name=account.display_name,
        admin=account.admin,
        create_time=timestamp(account.create_time),
    )


def access_key_to_proto(key: AccessKey) -> resources_pb2.AccessKey:
    return resources_pb2.AccessKey(
        name=key.name,
        access_key_id=key.access_key_id,
        state=_STATES[key.state],
        grants=[
            resources_pb2.Grant(
                resource=g.resource, level=resources_pb2.AccessLevel.ValueType(int(g.level))
            )
            for g in key.grants
        ],
        description=key.description,
        create_time=timestamp(key.create_time),
        last_used_time=_optional(key.last_used_time),
        secret_reset_time=_optional(key.secret_reset_time),
    )


def api_key_to_proto(key: ApiKey) -> resources_pb2.ApiKey:
    message = resources_pb2.ApiKey(
        name=key.name,
        api_key_id=key.api_key_id,
        state=_STATES[key.state],
        scopes=[
            resources_pb2.ApiKeyScope(methods=sorted(s.methods), resources=list(s.resources))
            for s in key.scopes
        ],
        expire_time=_optional(key.expire_time),
        daily_quota=key.daily_quota,
        description=key.description,
        create_time=timestamp(key.create_time),
        last_used_time=_optional(key.last_used_time),
    )
    if key.rate_limit is not None:
        message.rate_limit.CopyFrom(
            resources_pb2.RateLimit(
                requests_per_second=key.rate_limit.requests_per_second,
                burst=key.rate_limit.burst,
            )
        )
    return message


def _grants(messages: list[resources_pb2.Grant]) -> list[Grant]:
    grants = []
    for message in messages:
        if message.level not in (level.value for level in AccessLevel):
            raise InvalidArgument(
                "a grant needs a level: READ, READWRITE or FULL",
                metadata={"field": "grants.level"},
            )
        grants.append(Grant(message.resource, AccessLevel(message.level)))
    return grants


def audit_event_to_proto(record: AuditRecord) -> resources_pb2.AuditEvent:
    event = record.event
    return resources_pb2.AuditEvent(
        sequence=record.seq,
        time=timestamp(event.occurred_at),
        request_id=event.request_id,
        credential_id=event.credential_id,
        account=event.account,
        method=event.method,
        resource=event.resource,
        outcome=event.outcome,
        reason=event.reason,
        latency_micros=event.latency_us,
        source=event.source,
        previous_hash=record.prev_hash,
        hash=record.hash,
    )


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(self, identity: IdentityManagement, max_message_bytes: int = 1 << 20) -> None:
        self._identity = identity
        self._max_message_bytes = max_message_bytes

    def CreateAccount(
        self, request: identity_service_pb2.CreateAccountRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Account:
        account = self._identity.create_account(
            request.account_id, request.account.display_name, request.account.admin
        )
        return account_to_proto(account)

    def GetAccount(
        self, request: identity_service_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> resources_pb2.Account:
        return account_to_proto(self._identity.get_account(request.name))

    def ListAccounts(
        self, request: identity_service_pb2.ListAccountsRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.ListAccountsResponse:
        page = self._identity.list_accounts(request.page_size, request.page_token)
        response = identity_service_pb2.ListAccountsResponse(
            accounts=[account_to_proto(a) for a in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "accounts", page, self._max_message_bytes)
        return response

    def CreateAccessKey(
        self, request: identity_service_pb2.CreateAccessKeyRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.CreateAccessKeyResponse:
        key, secret = self._identity.create_access_key(
            request.parent,
            _grants(list(request.access_key.grants)),
            request.access_key.description,
        )
        return identity_service_pb2.CreateAccessKeyResponse(
            access_key=access_key_to_proto(key), secret_key=secret
        )

    def GetAccessKey(
        self, request: identity_service_pb2.GetAccessKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.AccessKey:
        return access_key_to_proto(self._identity.get_access_key(request.name))

    def ListAccessKeys(
        self, request: identity_service_pb2.ListAccessKeysRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.ListAccessKeysResponse:
        page = self._identity.list_access_keys(
            request.parent, request.page_size, request.page_token
        )
        response = identity_service_pb2.ListAccessKeysResponse(
            access_keys=[access_key_to_proto(k) for k in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "access_keys", page, self._max_message_bytes)
        return response

    def ResetSecretKey(
        self, request: identity_service_pb2.ResetSecretKeyRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.CreateAccessKeyResponse:
        key, secret = self._identity.reset_secret_key(request.name)
        return identity_service_pb2.CreateAccessKeyResponse(
            access_key=access_key_to_proto(key), secret_key=secret
        )

    def RevokeAccessKey(
        self, request: identity_service_pb2.RevokeAccessKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.AccessKey:
        return access_key_to_proto(self._identity.revoke_access_key(request.name))

    def DeleteAccessKey(
        self, request: identity_service_pb2.DeleteAccessKeyRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._identity.delete_access_key(request.name)
        return empty_pb2.Empty()

    def CreateApiKey(
        self, request: identity_service_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.CreateApiKeyResponse:
        spec = request.api_key
        scopes = [ApiScope(frozenset(s.methods), tuple(s.resources)) for s in spec.scopes]
        rate_limit = (
            RateLimit(spec.rate_limit.requests_per_second, spec.rate_limit.burst)
            if spec.HasField("rate_limit")
            else None
        )
        expire_time = optional_time(spec, "expire_time")
        key, token = self._identity.create_api_key(
            request.parent,
            scopes,
            expire_time=expire_time,
            rate_limit=rate_limit,
            daily_quota=spec.daily_quota,
            description=spec.description,
        )
        return identity_service_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(key), token=token)

    def GetApiKey(
        self, request: identity_service_pb2.GetApiKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.ApiKey:
        return api_key_to_proto(self._identity.get_api_key(request.name))

    def ListApiKeys(
        self, request: identity_service_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.ListApiKeysResponse:
        page = self._identity.list_api_keys(request.parent, request.page_size, request.page_token)
        response = identity_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(k) for k in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "api_keys", page, self._max_message_bytes)
        return response

    def RevokeApiKey(
        self, request: identity_service_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> resources_pb2.ApiKey:
        return api_key_to_proto(self._identity.revoke_api_key(request.name))

    def GetUsage(
        self, request: identity_service_pb2.GetUsageRequest, context: grpc.ServicerContext
    ) -> identity_service_pb2.GetUsageResponse:
        page = self._identity.usage(
            request.name, request.days, request.page_size, request.page_token
        )
        response = identity_service_pb2.GetUsageResponse(
            counters=[
                resources_pb2.UsageCounter(day=c.day, method=c.method, count=c.count)
                for c in page.items
            ],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "counters", page, self._max_message_bytes)
        return response


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog, max_message_bytes: int = 1 << 20) -> None:
        self._audit = audit
        self._max_message_bytes = max_message_bytes

    def ListAuditEvents(
        self, request: audit_service_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> audit_service_pb2.ListAuditEventsResponse:
        audit_filter = AuditFilter(
            start_time=optional_time(request, "start_time"),
            end_time=optional_time(request, "end_time"),
            credential_id=request.credential_id,
            resource=request.resource,
            method=request.method,
            outcome=request.outcome,
        )
        page = self._audit.list_events(audit_filter, request.page_size, request.page_token)
        response = audit_service_pb2.ListAuditEventsResponse(
            events=[audit_event_to_proto(r) for r in page.items],
            next_page_token=page.next_page_token,
        )
        fit_response(response, "events", page, self._max_message_bytes)
        return response

    def VerifyAuditLog(
        self, request: audit_service_pb2.VerifyAuditLogRequest, context: grpc.ServicerContext
    ) -> audit_service_pb2.VerifyAuditLogResponse:
        result = self._audit.verify()
        return audit_service_pb2.VerifyAuditLogResponse(
            ok=result.ok,
            records_checked=result.records_checked,
            checkpoints_checked=result.checkpoints_checked,
            last_sequence=result.last_seq,
            findings=[
                audit_service_pb2.AuditFinding(
                    kind=_FINDINGS[f.kind], sequence=f.seq, detail=f.detail
                )
                for f in result.findings
            ],
        )
