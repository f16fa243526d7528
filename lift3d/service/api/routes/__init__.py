"""One router per resource: ``generations`` (the job routes), ``images`` (synchronous image endpoints), ``events``
(server-sent events), ``history`` (listings), ``account`` (the caller's key), ``health`` and ``playground`` (the page).
"""
