"""One router per resource: ``generations`` (the job routes), ``images`` (synchronous image endpoints), ``fast3d``
(the synchronous image → GLB endpoint), ``events`` (server-sent events), ``history`` (listings), ``account`` (the
caller's key), ``health`` and ``playground`` (the page).
"""
