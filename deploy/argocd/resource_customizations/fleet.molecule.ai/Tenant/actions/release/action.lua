-- Releases a hold: removes spec.pinnedDigest, so the tenant follows its channel (and its rollout
-- policy) again.
obj.spec.pinnedDigest = nil
return obj
