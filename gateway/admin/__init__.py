"""The admin REST API under `/admin/v1`: tenants, keys, limits, budgets, prices, usage, audit."""
