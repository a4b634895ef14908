-- Holds the tenant at the digest its serving slot runs: spec.pinnedDigest. A pinned tenant leaves
-- its rollout policy and stays there, whatever its channel says, until released.
local o = (obj.status or {}).observed
local digest = nil
if o ~= nil and o.activeSlot ~= nil and o[o.activeSlot] ~= nil then
  digest = o[o.activeSlot].digest
end
if digest == nil then
  error("hold: the host has not reported the digest it runs (status.observed) yet", 0)
end
obj.spec.pinnedDigest = digest
return obj
