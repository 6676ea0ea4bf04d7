"""The imperative shell: kopf handlers and indexes, the reconcile loop, API writes, leader election."""
