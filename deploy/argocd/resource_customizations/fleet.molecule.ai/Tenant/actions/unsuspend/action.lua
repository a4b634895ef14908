-- Unsuspends the tenant: spec.suspend false, the operator manages the host again.
obj.spec.suspend = false
return obj
