"""The control actions (request, approve, deny, cancel, break-glass grant, revoke, kill, token) that api/ and cli/ call.

caller: who acts; errors: refusals with a code; rules: pure decisions (one validation of target, scope and TTL for
requests and grants); grants: issue a grant, rebuild its claims; workflow: requests over the store; actions:
break-glass, revoke, kill; apikeys: control-plane keys. JSON views stay in api/views.
"""
