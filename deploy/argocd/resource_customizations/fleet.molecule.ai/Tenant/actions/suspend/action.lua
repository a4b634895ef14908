-- Suspends the tenant: spec.suspend true. The operator then sends nothing to the host and stops
-- observing it.
obj.spec.suspend = true
return obj
