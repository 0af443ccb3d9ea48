"""Audit anchors: signed checkpoints of the audit chain head, published outside the gateway, checked by verify."""
