-- Argo CD actions of a fleet.molecule.ai/v1alpha1 Tenant: hold it at the digest it runs (a pin,
-- spec.pinnedDigest), release the pin, suspend or unsuspend it (spec.suspend).
local actions = {}

-- The digest of the serving slot, as the host reports it.
local function running()
  local o = (obj.status or {}).observed
  if o == nil or o.activeSlot == nil or o[o.activeSlot] == nil then
    return nil
  end
  return o[o.activeSlot].digest
end

local pinned = obj.spec.pinnedDigest ~= nil
local suspended = obj.spec.suspend == true
actions["hold"] = {["disabled"] = pinned or running() == nil, ["iconClass"] = "fa fa-fw fa-thumbtack", ["displayName"] = "Hold at the running digest"}
actions["release"] = {["disabled"] = not pinned, ["iconClass"] = "fa fa-fw fa-unlock", ["displayName"] = "Release the hold"}
actions["suspend"] = {["disabled"] = suspended, ["iconClass"] = "fa fa-fw fa-pause-circle", ["displayName"] = "Suspend (leave the host alone)"}
actions["unsuspend"] = {["disabled"] = not suspended, ["iconClass"] = "fa fa-fw fa-play-circle", ["displayName"] = "Unsuspend"}
return actions
