"""Who calls and who pays: :mod:`~lift3d.service.accounts.principal` (the caller as the service sees it),
:mod:`~lift3d.service.accounts.keys` (API keys, stored hashed) and :mod:`~lift3d.service.accounts.credits` (prices
in credits before a job runs, and the ledger that holds, charges and refunds them)."""
